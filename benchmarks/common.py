"""Shared benchmark plumbing: interleaved best-of-N timing and a results table.

These machines are noisy, so every benchmark measures its baseline in the same run, interleaves
the candidates (A, B, A, B, …) and reports the best run of each, plus their ratio.
"""

from __future__ import annotations

import gc
import json
import platform
import time
from collections.abc import Callable
from typing import Any

__all__ = ["best_of", "print_table"]


def best_of(candidates: dict[str, Callable[[], int]], reps: int) -> dict[str, float]:
    """Run each candidate ``reps`` times, interleaved; each returns how many items it handled.

    Returns items per second of the best run of each candidate.
    """
    best: dict[str, float] = dict.fromkeys(candidates, 0.0)
    for _ in range(reps):
        for name, run in candidates.items():
            gc.collect()
            started = time.perf_counter()
            items = run()
            elapsed = time.perf_counter() - started
            best[name] = max(best[name], items / elapsed)
    return best


def print_table(
    title: str, rows: list[tuple[str, str]], extra: dict[str, Any], as_json: bool
) -> None:
    if as_json:
        print(json.dumps({"benchmark": title, **extra}, indent=2))
        return
    print(f"# {title}  (python {platform.python_version()}, {platform.machine()})")
    width = max(len(r[0]) for r in rows)
    for name, value in rows:
        print(f"{name.ljust(width)}  {value}")
