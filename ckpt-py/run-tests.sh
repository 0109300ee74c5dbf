#!/usr/bin/env bash
# Builds and installs the Python package into a fresh virtual environment, then runs its tests.
# This is what CI runs (from the repository root or anywhere):  bash ckpt-py/run-tests.sh [pytest args]
#
# Needs: python3 (>= 3.11) with the venv module and pip, and the Rust toolchain (cargo) plus a C
# compiler (zstd-sys builds C code). On Debian/Ubuntu: apt-get install python3-venv build-essential
# (python3-venv only for a Debian python3 without venv; ensurepip must work). pip downloads maturin,
# pytest, hypothesis, numpy and mpi4py from PyPI. The MPI tests need Open MPI's mpirun (openmpi-bin).
#
# Sizes of the heavy tests: CKPT_PY_BIG_MB (1024), CKPT_PY_KILL_ITERATIONS (25),
# CKPT_PY_HYPOTHESIS_EXAMPLES (60). CKPT_PY_VENV chooses the venv directory (default: a temporary one).
#
# One abi3 wheel serves every CPython >= 3.11: build it once, test it under several interpreters.
#   CKPT_PY_WHEEL_OUT=<dir>   build the wheel into <dir> (kept), then install and test it
#   CKPT_PY_WHEEL=<file.whl>  install this wheel instead of building one
#   PYTHON=<interpreter>      the Python to test under (default python3)
# e.g.  CKPT_PY_WHEEL_OUT=w bash ckpt-py/run-tests.sh -q
#       PYTHON=python3.13 CKPT_PY_WHEEL=$(echo w/*.whl) bash ckpt-py/run-tests.sh -q
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
wheel="${CKPT_PY_WHEEL:-}"
if [ -n "$wheel" ]; then
    if [ ! -f "$wheel" ]; then
        echo "run-tests.sh: CKPT_PY_WHEEL=$wheel is not a file" >&2
        exit 1
    fi
else
    # The package itself, built by maturin from this checkout (release build of the Rust code).
    out="${CKPT_PY_WHEEL_OUT:-$venv/wheel}"
    mkdir -p "$out"
    rm -f "$out"/ckpt_hpc-*.whl
    "$venv/bin/python" -m pip wheel --quiet --no-deps --wheel-dir "$out" "$here"
    wheel="$(ls "$out"/ckpt_hpc-*.whl)"
fi
echo "run-tests.sh: $(basename "$wheel") ($(du -k "$wheel" | cut -f1) KiB) under $("$venv/bin/python" --version)"
"$venv/bin/python" -m pip install --quiet --force-reinstall --no-deps "$wheel"
"$venv/bin/python" -m pip install --quiet pytest hypothesis numpy
# mpi4py for the MPI tests (tests/test_mpi.py: 4 ranks under Open MPI's mpirun). Its binary wheel carries
# extensions for the Open MPI and MPICH ABIs and loads the system's libmpi (the tests pick Open MPI's);
# without a wheel pip builds it from source (needs mpicc: apt-get install libopenmpi-dev openmpi-bin).
# Under CI=true it must install (the tests then must run); elsewhere the MPI tests skip without it.
if ! "$venv/bin/python" -m pip install --quiet mpi4py; then
    if [ "${CI:-}" = "true" ]; then
        echo "run-tests.sh: pip install mpi4py failed (CI runs the MPI tests)" >&2
        exit 1
    fi
    echo "run-tests.sh: pip install mpi4py failed: the MPI tests will be skipped" >&2
fi

# The Rust CLI that the wheel's `ckpt` is compared with (tests/test_cli.py), built from this checkout:
# a binary left in target/ by an older build would compare against old output.
if [ -z "${CKPT_CLI_BIN:-}" ] && command -v cargo >/dev/null; then
    (cd "$here/.." && cargo build --quiet --locked -p ckpt-cli)
    target_dir="${CARGO_TARGET_DIR:-$here/../target}"
    export CKPT_CLI_BIN="$target_dir/debug/ckpt"
fi

cd "$here"
"$venv/bin/python" -c 'import ckpt; print("ckpt", ckpt.__version__, "from", ckpt.__file__)'
"$venv/bin/python" -m pytest tests -p no:cacheprovider -rs "$@"
