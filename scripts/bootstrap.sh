#!/usr/bin/env bash
# Set up .venv with milnce and its extras on a fresh machine (idempotent, quiet).
# Usage: source scripts/bootstrap.sh [extras]   e.g. "search,serve,test"
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
EXTRAS="${1:-search,serve}"
PY="${PYTHON:-python3}"
VENV="$ROOT/.venv"
if [ ! -x "$VENV/bin/python" ]; then
  echo "[milnce] creating $VENV" >&2
  "$PY" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip install -q --disable-pip-version-check)
# PyTorch first, pinned: a bare 'torch' requirement would pull a multi-GB CUDA build.
if ! "$VENV/bin/python" -c "import torch" >/dev/null 2>&1; then
  echo "[milnce] installing torch==2.13.0 (CPU)" >&2
  "${PIP[@]}" torch==2.13.0
fi
STAMP="$VENV/.milnce-installed-$EXTRAS"
if [ ! -f "$STAMP" ] || [ "$ROOT/pyproject.toml" -nt "$STAMP" ]; then
  echo "[milnce] installing milnce[$EXTRAS]" >&2
  "${PIP[@]}" -e "$ROOT[$EXTRAS]" 2>&1 | grep -v "^WARNING: Location" >&2 || true
  "$VENV/bin/python" -c "import milnce" || { echo "[milnce] install failed" >&2; exit 1; }
  touch "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
