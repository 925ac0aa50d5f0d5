"""Run the atheris fuzzers for a fixed number of inputs and report count, time, crashes, hangs.

Usage (from the repository root, with the project's virtualenv)::

    python fuzz/long_run.py                      # 1 000 000 inputs per target, both targets
    python fuzz/long_run.py --runs 20000 decode  # a short run of one target
    python fuzz/long_run.py --json out.json      # also write the figures as JSON

Each target runs in its own process (in parallel, one per target), starting from the checked-in
seeds (``fuzz/corpus/TARGET``) and a scratch corpus that receives what the fuzzer finds, so the
checked-in seeds never change. A crash is any input that makes the target raise (an exception
or a broken promise); a hang is any input that takes longer than ``--timeout`` seconds; an OOM is
an input that pushes the process over ``--rss-limit-mb``. Their inputs are kept in the output
directory (``crash-*``, ``timeout-*``, ``oom-*``) and replay with ``python fuzz/replay.py``.
The exit status is 0 only when every target ran all its inputs with no crash, hang or OOM.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENTRY = ROOT / "fuzz" / "atheris_fuzz.py"
CORPUS = ROOT / "fuzz" / "corpus"
TARGET_NAMES = ("decode", "session")
#: Largest input the fuzzer builds: past the WebSocket message limit (16 KiB) and large enough
#: for big frames; the decoder's own 1 MiB limit is covered by the seeds and the live fuzz.
MAX_LEN = 20_000


@dataclass
class RunResult:
    target: str
    runs: int
    seconds: float
    exec_per_sec: float
    crashes: int
    hangs: int
    ooms: int
    peak_rss_mb: int
    exit_code: int
    corpus_size: int
    artifacts: list[str]

    @property
    def clean(self) -> bool:
        return self.exit_code == 0 and not (self.crashes or self.hangs or self.ooms)


def run_target(
    target: str,
    runs: int,
    out_dir: Path,
    *,
    seeds: Path | None = None,
    timeout: int = 10,
    max_len: int = MAX_LEN,
    rss_limit_mb: int = 2048,
    max_total_time: int = 0,
    seed: int = 1,
    wall_limit: float | None = None,
) -> RunResult:
    """One atheris process; returns its figures (parsed from libFuzzer's final stats)."""
    work = out_dir / f"{target}-corpus"
    work.mkdir(parents=True, exist_ok=True)
    artifacts = out_dir / f"{target}-artifacts"
    artifacts.mkdir(parents=True, exist_ok=True)
    seeds = seeds if seeds is not None else CORPUS / target
    cmd = [
        sys.executable,
        str(ENTRY),
        target,
        f"-runs={runs}",
        f"-timeout={timeout}",
        f"-max_len={max_len}",
        f"-rss_limit_mb={rss_limit_mb}",
        f"-seed={seed}",
        f"-artifact_prefix={artifacts}/",
        "-print_final_stats=1",
        "-print_pcs=0",
        str(work),
        *([str(seeds)] if seeds.exists() else []),
    ]
    if max_total_time:
        cmd.insert(3, f"-max_total_time={max_total_time}")
    log_path = out_dir / f"{target}.log"
    started = time.monotonic()
    with log_path.open("wb") as log:
        proc = subprocess.run(
            cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, timeout=wall_limit, check=False
        )
    seconds = time.monotonic() - started
    text = log_path.read_text(errors="replace")
    executed = _stat(text, "number_of_executed_units")
    done = re.findall(r"Done (\d+) runs in (\d+) second", text)
    if executed is None and done:
        executed = int(done[-1][0])
    found = sorted(p.name for p in artifacts.iterdir())
    return RunResult(
        target=target,
        runs=executed or 0,
        seconds=round(seconds, 1),
        exec_per_sec=round((executed or 0) / seconds, 1) if seconds else 0.0,
        crashes=sum(n.startswith("crash-") for n in found),
        hangs=sum(n.startswith("timeout-") for n in found),
        ooms=sum(n.startswith("oom-") for n in found),
        peak_rss_mb=_stat(text, "peak_rss_mb") or 0,
        exit_code=proc.returncode,
        corpus_size=sum(1 for _ in work.iterdir()),
        artifacts=[str(artifacts / n) for n in found],
    )


def _stat(text: str, name: str) -> int | None:
    found = re.findall(rf"stat::{name}:\s+(\d+)", text)
    return int(found[-1]) if found else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "targets", nargs="*", metavar="TARGET", help="decode, session (default: both)"
    )
    parser.add_argument("--runs", type=int, default=1_000_000, help="inputs per target")
    parser.add_argument("--timeout", type=int, default=10, help="seconds: slower is a hang")
    parser.add_argument("--max-len", type=int, default=MAX_LEN)
    parser.add_argument("--rss-limit-mb", type=int, default=2048)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, help="keep logs, corpora and artifacts here")
    parser.add_argument("--json", type=Path, help="write the figures here as JSON")
    args = parser.parse_args()
    args.targets = args.targets or list(TARGET_NAMES)
    if unknown := set(args.targets) - set(TARGET_NAMES):
        parser.error(f"unknown target(s): {', '.join(sorted(unknown))}")
    out = args.out or Path(tempfile.mkdtemp(prefix="metricsd-fuzz-"))
    out.mkdir(parents=True, exist_ok=True)
    print(f"fuzzing {', '.join(args.targets)}: {args.runs} inputs each; output in {out}")
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=len(args.targets)) as pool:
        futures = [
            pool.submit(
                run_target,
                t,
                args.runs,
                out,
                timeout=args.timeout,
                max_len=args.max_len,
                rss_limit_mb=args.rss_limit_mb,
                seed=args.seed,
            )
            for t in args.targets
        ]
        results = [f.result() for f in futures]
    elapsed = time.monotonic() - started
    print(
        f"{'target':<8} {'inputs':>10} {'seconds':>8} {'exec/s':>8} {'crashes':>7} "
        f"{'hangs':>5} {'ooms':>4} {'rss MB':>6} {'corpus':>6}"
    )
    for r in results:
        print(
            f"{r.target:<8} {r.runs:>10} {r.seconds:>8.1f} {r.exec_per_sec:>8.0f} "
            f"{r.crashes:>7} {r.hangs:>5} {r.ooms:>4} {r.peak_rss_mb:>6} {r.corpus_size:>6}"
        )
        for artifact in r.artifacts:
            print(f"  {artifact}")
    print(f"total: {sum(r.runs for r in results)} inputs in {elapsed:.1f} s (wall)")
    if args.json:
        figures = {
            "python": sys.version.split()[0],
            "wall_seconds": round(elapsed, 1),
            "targets": [asdict(r) for r in results],
        }
        args.json.write_text(json.dumps(figures, indent=1) + "\n")
    ok = all(r.clean and r.runs >= args.runs for r in results)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
