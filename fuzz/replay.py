"""Replay inputs (a crash artifact, a seed, a directory of them) through a fuzz target.

Usage: ``python fuzz/replay.py {decode,session} PATH...`` from the repository root. Prints one
line per input and the traceback of the first failure; exits 1 if any input fails. Needs no
atheris: the targets are plain functions.
"""

from __future__ import annotations

import sys
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fuzz.targets import TARGETS


def main() -> None:
    if len(sys.argv) < 3 or sys.argv[1] not in TARGETS:
        sys.exit(f"usage: {sys.argv[0]} {{{','.join(TARGETS)}}} PATH...")
    target = TARGETS[sys.argv[1]]
    paths: list[Path] = []
    for arg in sys.argv[2:]:
        path = Path(arg)
        paths.extend(sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path])
    failed = 0
    for path in paths:
        try:
            target(path.read_bytes())
        except Exception:
            failed += 1
            print(f"FAIL {path}")
            if failed == 1:
                traceback.print_exc()
        else:
            print(f"ok   {path}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
