#!/usr/bin/env bash
# Install ntklab (editable) and optional extras:  scripts/install.sh [--no-venv] [test|ray|test,ray]
#
# Where it installs:
#   - by default into the virtual environment .venv at the repository root, created when missing
#     with `python3 -m venv --system-site-packages`, so a torch already installed in the base
#     Python (a CUDA build included) is used as is. PYTHON=/path/to/python3 chooses the base
#     interpreter. This works with distribution Pythons that refuse pip installs (PEP 668).
#   - inside an active virtual or conda environment (VIRTUAL_ENV or CONDA_PREFIX set, PYTHON
#     unset), into that environment; .venv becomes a link to it unless .venv is already a
#     virtual environment of its own.
#   - with --no-venv (or NTKLAB_NO_VENV=1), into PYTHON (default python3) itself.
# Without a torch, exactly torch==2.13.0 is installed.
# Then, without activating anything: .venv/bin/ntklab run, .venv/bin/python -m pytest.
set -euo pipefail
export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1
cd "$(dirname "$0")/.."
root="$(pwd -P)"

die() {
  echo "install.sh: $*" >&2
  exit 1
}

no_venv="${NTKLAB_NO_VENV:-0}"
extras=""
for arg in "$@"; do
  case "$arg" in
    --no-venv) no_venv=1 ;;
    -h | --help)
      sed -n '2,14s/^# \{0,1\}//p' "$0"
      exit 0
      ;;
    -*) die "unknown option $arg; usage: scripts/install.sh [--no-venv] [test|ray|test,ray]." ;;
    *) extras="$arg" ;;
  esac
done

base="${PYTHON:-python3}"
need_python() {
  command -v "$1" >/dev/null 2>&1 || die "no Python interpreter '$1' found; install Python 3.10 or newer, or set PYTHON=/path/to/python3."
  "$1" -c 'import sys; sys.exit(sys.version_info < (3, 10))' ||
    die "$1 is Python $("$1" -c 'import platform; print(platform.python_version())'); ntklab needs 3.10 or newer (set PYTHON=/path/to/python3)."
}

active=""
if [ "$no_venv" != 1 ] && [ -z "${PYTHON:-}" ]; then
  active="${VIRTUAL_ENV:-${CONDA_PREFIX:-}}"
  # The repository's own .venv, activated, is simply reused below.
  if [ -n "$active" ] && [ "$(cd "$active" 2>/dev/null && pwd -P)" = "$root/.venv" ]; then
    active=""
  fi
fi

if [ "$no_venv" = 1 ]; then
  need_python "$base"
  py="$base"
elif [ -n "$active" ] && { [ ! -e .venv ] || [ -L .venv ]; }; then
  [ -x "$active/bin/python" ] || die "the active environment $active has no bin/python; deactivate it, or run with --no-venv."
  py="$active/bin/python"
  need_python "$py"
  ln -sfn "$active" .venv
  echo "install.sh: installing into the active environment $active (.venv links to it)"
else
  if [ -L .venv ] && ! .venv/bin/python -c "" >/dev/null 2>&1; then
    rm .venv # a link to an environment that is gone
  fi
  if ! .venv/bin/python -m pip --version >/dev/null 2>&1; then
    if [ -e .venv ] && [ ! -f .venv/pyvenv.cfg ]; then
      die ".venv exists but is not a virtual environment; move it away, or run with --no-venv."
    fi
    need_python "$base"
    if ! "$base" -c "import venv, ensurepip" >/dev/null 2>&1; then
      die "$base cannot create virtual environments because its venv/ensurepip module is missing: install it (Debian/Ubuntu: sudo apt install python3-venv), or set PYTHON to another Python 3.10+, or run with --no-venv."
    fi
    created=0
    [ -e .venv ] || created=1
    if ! "$base" -m venv --system-site-packages --clear .venv; then
      [ "$created" = 1 ] && rm -rf .venv
      die "$base -m venv failed (see above); set PYTHON to another Python 3.10+, or run with --no-venv."
    fi
    echo "install.sh: created .venv from $("$base" -c 'import sys; print(sys.executable)')"
  fi
  py="$root/.venv/bin/python"
fi

if ! "$py" -c "import torch" >/dev/null 2>&1; then
  "$py" -m pip install --quiet "torch==2.13.0"
fi
spec="."
[ -n "$extras" ] && spec=".[${extras}]"
"$py" -m pip install --quiet -e "$spec"
"$py" -c "import sys, ntklab, torch; print(f'ntklab {ntklab.__version__} installed in {sys.prefix} (torch {torch.__version__})')"
if [ "$no_venv" != 1 ]; then
  echo "run it with .venv/bin/ntklab (tests: .venv/bin/python -m pytest), or first: source .venv/bin/activate"
fi
