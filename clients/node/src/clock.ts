/**
 * Wall-clock time in Unix seconds with sub-millisecond resolution (SPEC's `ts`).
 *
 * `Date.now()` has millisecond resolution, too coarse for gaps between streamed tokens;
 * `performance.now()` is finer but monotonic. `now()` is the monotonic clock plus an offset to
 * the wall clock, taken at start and re-taken by {@link resync} when the two have drifted apart
 * by more than {@link MAX_DRIFT_MS} (NTP slewing), so intervals stay smooth and times stay true.
 */

const perf = performance;
const MAX_DRIFT_MS = 50;
let offsetMs = Date.now() - perf.now();

/** Now, in Unix seconds (float). */
export function now(): number {
  return (offsetMs + perf.now()) / 1000;
}

/** Re-anchor to the wall clock if it has drifted (the flusher calls this once per cycle). */
export function resync(): void {
  const fresh = Date.now() - perf.now();
  if (Math.abs(fresh - offsetMs) > MAX_DRIFT_MS) offsetMs = fresh;
}
