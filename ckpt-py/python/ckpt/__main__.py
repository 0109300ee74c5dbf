"""``python -m ckpt`` and the ``ckpt`` command of the wheel: the Rust CLI (``ckpt-cli``), compiled into the
extension, with the same subcommands and output (``inspect``, ``verify``, ``list``, ``env``, ``create``,
``requeue``, ``restart``...), so the documented sbatch script works with ``pip install`` alone."""

from __future__ import annotations

import os
import sys


def main() -> None:
    from . import _ckpt

    sys.stdout.flush()
    sys.stderr.flush()
    sys.exit(_ckpt.cli_main(["ckpt", *(os.fsdecode(a) for a in sys.argv[1:])]))


if __name__ == "__main__":
    main()
