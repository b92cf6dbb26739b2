#!/usr/bin/env bash
# Install ntklab (editable) into the current Python, plus extras: scripts/install.sh [test|ray|test,ray]
# A torch the user already has (a CUDA build included) is kept; without one, the pinned
# release is installed (on machines with a local CPU wheel of it, that is a seconds-long install).
set -euo pipefail
export PIP_ROOT_USER_ACTION=ignore
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
extras="${1:-}"
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  "$PY" -m pip install --quiet "torch==2.13.0"
fi
spec="."
[ -n "$extras" ] && spec=".[${extras}]"
"$PY" -m pip install --quiet --disable-pip-version-check -e "$spec"
"$PY" -c "import ntklab, torch; print(f'ntklab {ntklab.__version__} installed (torch {torch.__version__})')"
