"""A short coverage-guided fuzz run of both targets (a few seconds each), as CI runs it.

The long run (≥ 1 000 000 inputs per target) is ``python fuzz/long_run.py``; its figures are in
docs/reliability.md. Both start from the checked-in seeds. The selftest proves that the runner
sees a crash and a hang, so a clean result means something.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytest.importorskip("atheris", reason="atheris is not installed (pip install -e '.[dev]')")

from fuzz.long_run import RunResult, run_target

SECONDS = 3
WALL_LIMIT = 90.0


def test_short_fuzz_run_of_both_targets(tmp_path: Path) -> None:
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = [
            pool.submit(
                run_target,
                target,
                10_000_000,
                tmp_path,
                max_total_time=SECONDS,
                timeout=10,
                wall_limit=WALL_LIMIT,
            )
            for target in ("decode", "session")
        ]
        results: list[RunResult] = [f.result() for f in futures]
    for r in results:
        log = (tmp_path / f"{r.target}.log").read_text(errors="replace")[-3000:]
        assert r.clean, (r, log)
        assert r.runs >= 1000, (r, log)  # the seeds alone are ~180; it really fuzzed


def test_runner_counts_crashes_and_hangs(tmp_path: Path) -> None:
    seeds = tmp_path / "seeds"
    seeds.mkdir()
    (seeds / "crash").write_bytes(b"CRASH")
    hang_seeds = tmp_path / "hang-seeds"
    hang_seeds.mkdir()
    (hang_seeds / "hang").write_bytes(b"HANG")
    with ThreadPoolExecutor(max_workers=2) as pool:
        crash = pool.submit(
            run_target, "selftest", 100, tmp_path / "c", seeds=seeds, wall_limit=WALL_LIMIT
        )
        hang = pool.submit(
            run_target,
            "selftest",
            100,
            tmp_path / "h",
            seeds=hang_seeds,
            timeout=1,
            wall_limit=WALL_LIMIT,
        )
        crashed, hung = crash.result(), hang.result()
    assert crashed.crashes == 1 and crashed.exit_code != 0 and not crashed.clean
    assert Path(crashed.artifacts[0]).read_bytes() == b"CRASH"
    assert hung.hangs == 1 and hung.exit_code != 0 and not hung.clean
