#!/usr/bin/env bash
# The test suite: set up (venv, packages, Chromium for the web UI test) and run pytest.
set -euo pipefail
cd "$(dirname "$0")"
source scripts/bootstrap.sh search,serve,test
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "[milnce] installing chromium for the browser test" >&2
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
    || echo "[milnce] chromium not installed: the browser test will be skipped" >&2
fi
exec python -m pytest -q -p no:cacheprovider "$@"
