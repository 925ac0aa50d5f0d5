"""Coverage-guided fuzzing of one target with atheris (libFuzzer for Python).

Usage (from the repository root, with the project's virtualenv)::

    python fuzz/atheris_fuzz.py decode  [libFuzzer flags] WORK_CORPUS fuzz/corpus/decode
    python fuzz/atheris_fuzz.py session [libFuzzer flags] WORK_CORPUS fuzz/corpus/session

libFuzzer writes the inputs it finds into the *first* corpus directory, so pass a scratch
directory first and the checked-in seeds second (``fuzz/long_run.py`` does). Useful flags:
``-runs=N``, ``-max_total_time=S``, ``-timeout=S`` (an input slower than this is a hang),
``-max_len=N``, ``-artifact_prefix=DIR/``, ``-print_final_stats=1``.

The ``selftest`` target crashes on inputs that start with ``CRASH`` and hangs on inputs that
start with ``HANG``: it proves the runners notice both.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

with atheris.instrument_imports(include=["metricsd", "fuzz"]):
    from fuzz.targets import TARGETS


def selftest(data: bytes) -> None:
    if data.startswith(b"CRASH"):
        raise RuntimeError("selftest crash")
    if data.startswith(b"HANG"):
        time.sleep(3600)


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in (*TARGETS, "selftest"):
        sys.exit(f"usage: {sys.argv[0]} {{{','.join((*TARGETS, 'selftest'))}}} [libFuzzer args]")
    name = sys.argv[1]
    target: Callable[[bytes], None] = selftest if name == "selftest" else TARGETS[name]
    atheris.Setup([sys.argv[0], *sys.argv[2:]], target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
