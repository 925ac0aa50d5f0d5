"""Cost of one ``Emitter.request`` call on the calling thread, against baselines.

Usage: ``python benchmarks/bench_emitter.py [--n N] [--chunk C] [--reps R] [--json]``

Each candidate makes ``N`` calls per run, in timed bursts of ``C`` calls (default 1 000, about
one flush's worth); between bursts, outside the timing, its storage is drained, so buffers stay
at the size they have in service. Runs are interleaved across candidates; the best of ``R``
runs (default 5) is kept.

- ``list.append``: ``buf.append((12.5, "/v1/chat/completions", "gpt-4o", 100, 50))``, inline;
- ``minimal function``: ``f(12.5, endpoint=…, model=…, input_tokens=100, output_tokens=50)``, a
  plain function taking exactly those arguments and appending them as a tuple to a deque;
- ``minimal, full signature``: the same, but with ``Emitter.request``'s whole signature (23
  keyword-only parameters, appended as one tuple), so it also pays for binding the defaults;
- ``emitter.request``: the real method. The emitter points at a port where no daemon listens
  (it does not matter: the caller never touches the socket), with ``batch_size`` and
  ``max_buffer`` above ``C`` and a one-hour timeout, so its flusher does not run during a
  burst; between bursts ``flush()`` packs the rows (and drops the frames: no daemon);
- ``emitter.request (swap only)``: the same emitter, its buffer swapped out between bursts
  without packing, so the packer's cache footprint does not show in the next burst;
- ``emitter.request (defaults)``: an emitter with default settings, flusher running; wall time
  on the calling thread, which then also includes the flusher's share of the GIL.

Figures are ns per call with the empty-loop overhead subtracted. As in ``timeit``, the cyclic
garbage collector is disabled during a timed burst (its pauses are not the call's cost).
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import sys
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from metricsd_client import Emitter

ENDPOINT = "/v1/chat/completions"
MODEL = "gpt-4o"
NO_DAEMON = "tcp://127.0.0.1:9"  # the discard port: nothing listens for ZeroMQ there


CHUNK = 1000  # calls per timed burst; storage is drained between bursts, outside the timing


def _bursts(n: int, burst: Callable[[int], int], drain: Callable[[], object]) -> int:
    """Run ``n`` calls as bursts of :data:`CHUNK`, draining in between; return the timed ns."""
    total = 0
    done = 0
    while done < n:
        k = min(CHUNK, n - done)
        total += burst(k)
        drain()
        done += k
    return total


def _loop_empty(n: int) -> int:
    def burst(k: int) -> int:
        t0 = time.perf_counter_ns()
        for _ in range(k):
            pass
        return time.perf_counter_ns() - t0

    return _bursts(n, burst, lambda: None)


def _loop_list_append(n: int) -> int:
    buf: list[tuple[Any, ...]] = []
    append = buf.append

    def burst(k: int) -> int:
        t0 = time.perf_counter_ns()
        for _ in range(k):
            append((12.5, ENDPOINT, MODEL, 100, 50))
        return time.perf_counter_ns() - t0

    return _bursts(n, burst, buf.clear)


_dq: deque[tuple[Any, ...]] = deque()


def minimal(
    duration_ms: float,
    *,
    endpoint: str | None = None,
    model: str | None = None,
    input_tokens: int = 0,
    output_tokens: int = 0,
) -> None:
    _dq.append((duration_ms, endpoint, model, input_tokens, output_tokens))


def minimal_full(
    duration_ms: float,
    *,
    endpoint: str | None = None,
    model: str | None = None,
    status: int | None = 200,
    input_tokens: int | None = 0,
    output_tokens: int | None = 0,
    cached_tokens: int | None = 0,
    cache_write_tokens: int | None = 0,
    reasoning_tokens: int | None = 0,
    streaming: bool | None = None,
    ttft_ms: float | None = None,
    queue_ms: float | None = None,
    finish_reason: str | None = None,
    provider: str | None = None,
    error_type: str | None = None,
    error_message: str | None = None,
    batch: bool | None = None,
    cost_usd: float | None = None,
    api_key: str | None = None,
    key_id: str | None = None,
    user_id: str | None = None,
    request_id: str | None = None,
    ts: float | None = None,
) -> None:
    _dq.append(
        (duration_ms, status, input_tokens, output_tokens, cached_tokens, cache_write_tokens,
         reasoning_tokens, streaming, ttft_ms, queue_ms, finish_reason, provider, error_type,
         error_message, batch, cost_usd, endpoint, model, api_key, key_id, user_id, request_id,
         ts)
    )  # fmt: skip


def _loop_call(f: Callable[..., None], drain: Callable[[], object]) -> Callable[[int], int]:
    def burst(k: int) -> int:
        t0 = time.perf_counter_ns()
        for _ in range(k):
            f(12.5, endpoint=ENDPOINT, model=MODEL, input_tokens=100, output_tokens=50)
        return time.perf_counter_ns() - t0

    return lambda n: _bursts(n, burst, drain)


def main(argv: list[str] | None = None) -> int:
    global CHUNK
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=200_000, help="calls per run (default 200000)")
    ap.add_argument("--chunk", type=int, default=CHUNK, help="calls per timed burst")
    ap.add_argument("--reps", type=int, default=5, help="runs per candidate (best is kept)")
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = ap.parse_args(argv)
    n: int = args.n
    CHUNK = max(1, args.chunk)

    quiet = Emitter(
        NO_DAEMON,
        source="bench",
        batch_size=CHUNK + 1,
        batch_timeout_seconds=3600.0,
        max_buffer=CHUNK + 1,
        sndhwm=1,
    )
    default = Emitter(NO_DAEMON, source="bench-defaults")

    candidates: dict[str, Callable[[int], int]] = {
        "list.append": _loop_list_append,
        "minimal function": _loop_call(minimal, _dq.clear),
        "minimal, full signature": _loop_call(minimal_full, _dq.clear),
        # flush(): outside the timing; the frames are dropped (no daemon), the rows freed.
        "emitter.request": _loop_call(quiet.request, quiet.flush),
        # The same, but drained by the flusher's buffer swap alone (no packing between bursts,
        # so no cache pollution from it): the caller's cost in isolation.
        "emitter.request (swap only)": _loop_call(quiet.request, quiet._take),
        "emitter.request (defaults)": _loop_call(default.request, lambda: None),
    }
    # Warm-up: start the emitters' threads, specialise the bytecode.
    for run in candidates.values():
        run(min(n, 10_000))
    best: dict[str, float] = {name: float("inf") for name in candidates}
    empty = float("inf")
    for _ in range(args.reps):
        empty = min(empty, _loop_empty(n) / n)
        for name, run in candidates.items():
            gc.collect()
            gc.disable()  # as timeit does: the cyclic GC's pauses are not the call's cost
            try:
                best[name] = min(best[name], run(n) / n)
            finally:
                gc.enable()
    net = {name: max(v - empty, 0.0) for name, v in best.items()}
    emitter = net["emitter.request"]
    result: dict[str, Any] = {
        "python": sys.version.split()[0],
        "machine": platform.machine(),
        "n": n,
        "reps": args.reps,
        "loop_overhead_ns": round(empty, 1),
        "ns_per_call": {k: round(v, 1) for k, v in net.items()},
        "ratio_emitter_over_list_append": round(emitter / net["list.append"], 2),
        "ratio_emitter_over_minimal_function": round(emitter / net["minimal function"], 2),
        "ratio_emitter_over_minimal_full_signature": round(
            emitter / net["minimal, full signature"], 2
        ),
        # Events the timed emitter refused on the calling thread (buffer full): must be 0, or
        # the loop would have timed the cheaper drop branch. (Its frames are all dropped at
        # the socket, there being no daemon: that happens on the flusher, outside the timing.)
        "hot_path_drops": quiet._nbufdrop,
    }
    quiet.close(timeout=1.0)
    default.close(timeout=1.0)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"Python {result['python']} ({result['machine']}), n={n}, best of {args.reps}, "
          f"loop overhead {empty:.1f} ns subtracted")  # fmt: skip
    print(f"{'candidate':<30} {'ns/call':>8} {'emitter ÷ this':>15}")
    for name, v in net.items():
        ratio = f"{emitter / v:.2f}x" if v > 0 and name != "emitter.request" else ""
        print(f"{name:<30} {v:>8.1f} {ratio:>15}")
    print(f"hot-path drops during the timed loops: {result['hot_path_drops']} (must be 0)")
    print(f"emitter/list.append = {result['ratio_emitter_over_list_append']:.2f}, "
          f"emitter/minimal function = {result['ratio_emitter_over_minimal_function']:.2f}, "
          f"emitter/minimal full signature = "
          f"{result['ratio_emitter_over_minimal_full_signature']:.2f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
