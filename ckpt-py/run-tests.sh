#!/usr/bin/env bash
# Builds and installs the Python package into a fresh virtual environment, then runs its tests.
# This is what CI runs (from the repository root or anywhere):  bash ckpt-py/run-tests.sh [pytest args]
#
# Needs: python3 (>= 3.11) with the venv module and pip, and the Rust toolchain (cargo) plus a C
# compiler (zstd-sys builds C code). On Debian/Ubuntu: apt-get install python3-venv build-essential
# (python3-venv only for a Debian python3 without venv; ensurepip must work). pip downloads maturin,
# pytest, hypothesis and numpy from PyPI.
#
# Sizes of the heavy tests: CKPT_PY_BIG_MB (1024), CKPT_PY_KILL_ITERATIONS (25),
# CKPT_PY_HYPOTHESIS_EXAMPLES (60). CKPT_PY_VENV chooses the venv directory (default: a temporary one).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
python="${PYTHON:-python3}"

if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "run-tests.sh: $python is $("$python" --version 2>&1); ckpt needs Python >= 3.11" >&2
    exit 1
fi
if ! "$python" -c 'import venv, ensurepip' 2>/dev/null; then
    echo "run-tests.sh: $python has no working venv module: apt-get install python3-venv" >&2
    exit 1
fi

venv="${CKPT_PY_VENV:-}"
if [ -z "$venv" ]; then
    venv="$(mktemp -d "${TMPDIR:-/tmp}/ckpt-py-venv.XXXXXX")"
    trap 'rm -rf "$venv"' EXIT
fi
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
# The package itself, built by maturin from this checkout (release build of the Rust code).
"$venv/bin/python" -m pip install --quiet "$here"
"$venv/bin/python" -m pip install --quiet pytest hypothesis numpy

cd "$here"
"$venv/bin/python" -c 'import ckpt; print("ckpt", ckpt.__version__, "from", ckpt.__file__)'
"$venv/bin/python" -m pytest tests -p no:cacheprovider -rs "$@"
