#!/usr/bin/env bash
# The test suite: set up (venv, packages, Chromium and ffmpeg for two tests) and run pytest.
set -euo pipefail
cd "$(dirname "$0")"
source scripts/bootstrap.sh search,serve,test,onnx,eval,train
# System tools some tests need: installed when missing (as root with apt-get), quietly; a failed
# install is not fatal, the tests that need the tool are skipped and the summary says why (-rs).
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)  # the web UI browser test
command -v ffmpeg >/dev/null 2>&1 || missing+=(ffmpeg)      # the decoding parity test
if [ ${#missing[@]} -gt 0 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "[milnce] installing ${missing[*]} for the tests" >&2
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null) \
    || echo "[milnce] ${missing[*]} not installed: the tests that need them will be skipped" >&2
fi
exec python -m pytest -q -p no:cacheprovider "$@"
