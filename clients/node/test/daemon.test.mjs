// End to end against the real daemon (`python -m metricsd serve`): the counts it reports after
// the Node emitter sends, and the same traffic sent by the Python and the Node emitters to two
// daemons giving the same counts and tracker values. Every wait has a timeout.

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import { Emitter } from "../dist/index.js";
import { daemonSkip, emit, findPython, run, startDaemon, waitFor } from "./helpers.mjs";
import { countByType, PYTHON_SENDER, workload } from "./workload.mjs";

const skip = daemonSkip();
const TYPES = ["cache", "client", "error", "metric", "queue", "request", "stream.backpressure",
               "stream.end", "stream.start", "stream.token", "usage"]; // prettier-ignore

function received(samples) {
  return Object.fromEntries(TYPES.map((t) => [t, samples[`metricsd_events_received_total{type="${t}"}`] ?? 0]));
}

function sum(samples, name) {
  return Object.entries(samples)
    .filter(([k]) => k === name || k.startsWith(`${name}{`))
    .reduce((acc, [, v]) => acc + v, 0);
}

async function waitReceived(daemon, total, timeoutMs = 15_000) {
  let last = {};
  await waitFor(async () => {
    last = received(await daemon.samples());
    return Object.values(last).reduce((a, b) => a + b, 0) >= total;
  }, timeoutMs);
  return last;
}

describe("the Node emitter and the real daemon", { skip }, () => {
  let daemon;
  before(async () => {
    daemon = await startDaemon();
  });
  after(async () => {
    await daemon?.stop();
  });

  test("the daemon counts exactly what the Node emitter sent", async () => {
    const events = workload(Date.now() / 1000 - 30);
    const em = new Emitter({ endpoint: daemon.ingest[0], source: "node-e2e" });
    for (const e of events) emit(em, e);
    assert.equal(await em.close(), true);
    assert.equal(em.dropped, 0);
    assert.equal(em.sent, events.length);
    const got = await waitReceived(daemon, events.length);
    const want = countByType(events);
    for (const t of TYPES) assert.equal(got[t], want[t] ?? 0, t);
    const s = await daemon.samples();
    assert.equal(s['metricsd_events_received_total{type="request"}'], 300);
    assert.equal(sum(s, "metricsd_events_invalid_total"), 0);
    // One outcome per request (SPEC §4.1): requests, errors, and finished streams.
    assert.equal(sum(s, "llm_requests_total"), 300 + 20 + 10);
    const embeddings = events.filter((e) => e.type === "request" && e.endpoint === "/v1/embeddings");
    for (const model of ["gpt-4o", "gpt-4o-mini", "claude-3-5-sonnet-20241022"]) {
      const provider = model.startsWith("claude") ? "anthropic" : "openai";
      for (const status of [200, 429, 500]) {
        const n = embeddings.filter((e) => e.model === model && e.status === status).length;
        const key = `llm_requests_total{endpoint="/v1/embeddings",model="${model}",provider="${provider}",status="${status}"}`;
        assert.equal(s[key] ?? 0, n, key);
      }
    }
    const tokens = events.filter((e) => e.type === "request" && e.endpoint === "/v1/embeddings" && e.model === "gpt-4o")
      .reduce((a, e) => a + e.input_tokens, 0); // prettier-ignore
    assert.equal(
      s['llm_tokens_total{endpoint="/v1/embeddings",model="gpt-4o",provider="openai",type="input"}'],
      tokens,
    );
    assert.equal(s['llm_queue_depth{queue="gpu"}'], 9);
  });

  test("drops are reported to the daemon", async () => {
    const em = new Emitter({ endpoint: daemon.ingest[0], source: "dropper", maxBuffer: 5, batchTimeoutMs: 10_000 });
    for (let i = 0; i < 12; i++) em.queue(i, { queue: "drops" });
    assert.equal(em.dropped, 7);
    assert.equal(await em.close(), true);
    const key = 'metricsd_client_dropped_events_total{source="dropper"}';
    assert.equal(await daemon.waitSample(key, 7), 7);
  });
});

/** Values that depend on arrival time or on the process, not on the events. */
const VOLATILE_SAMPLES = /^(process_|python_|metricsd_tick_duration_seconds|metricsd_ws_|metricsd_frames_received_total|metricsd_build_info)/;
const VOLATILE_KEYS = new Set(["first_seen", "last_seen", "timestamp", "observed_seconds", "rate",
                               "tokens_rate", "errors_rate", "uptime_seconds", "window_seconds"]); // prettier-ignore

/**
 * Lists whose order is the order rows arrived in: the Python emitter sends a flush as one batch
 * (labels as dictionary columns, rows in call order) and the Node emitter as one batch per label
 * set, so the same events arrive in a different order. Compared as sets.
 */
const ARRIVAL_ORDERED = new Set(["recent_errors", "example_request_ids"]);
/** The first occurrence's message: which one is first depends on that order too. */
const FIRST_SEEN = new Set(["sample_message"]);

function stable(v) {
  if (Array.isArray(v)) return v.map(stable);
  if (v !== null && typeof v === "object") {
    return Object.fromEntries(
      Object.keys(v)
        .filter((k) => !VOLATILE_KEYS.has(k) && !FIRST_SEEN.has(k))
        .sort()
        .map((k) => {
          const value = stable(v[k]);
          if (ARRIVAL_ORDERED.has(k) && Array.isArray(value)) {
            return [k, value.map((x) => JSON.stringify(x)).sort()];
          }
          return [k, value];
        }),
    );
  }
  return v;
}

describe("Python and Node emitters, same events, two daemons", { skip }, () => {
  let a;
  let b;
  before(async () => {
    [a, b] = await Promise.all([startDaemon(), startDaemon()]);
  });
  after(async () => {
    await Promise.all([a?.stop(), b?.stop()]);
  });

  test("the daemons report the same counts and tracker values", async () => {
    const events = workload(Date.now() / 1000 - 30);
    const py = await run(findPython(), ["-c", PYTHON_SENDER, a.ingest[0], "svc"], {
      input: JSON.stringify(events),
      timeoutMs: 20_000,
    });
    assert.equal(py.code, 0, py.stderr);
    assert.deepEqual(JSON.parse(py.stdout), { ok: true, sent: events.length, dropped: 0 });
    const em = new Emitter({ endpoint: b.ingest[0], source: "svc" });
    for (const e of events) emit(em, e);
    assert.equal(await em.close(), true);
    assert.equal(em.sent, events.length);
    const [ra, rb] = await Promise.all([waitReceived(a, events.length), waitReceived(b, events.length)]);
    assert.deepEqual(rb, ra);
    assert.deepEqual(ra, Object.fromEntries(TYPES.map((t) => [t, countByType(events)[t] ?? 0])));
    // Let one more tick render the exposition on both.
    await new Promise((r) => setTimeout(r, 250));
    const [sa, sb] = await Promise.all([a.samples(), b.samples()]);
    const keep = (s) => Object.fromEntries(Object.entries(s).filter(([k]) => !VOLATILE_SAMPLES.test(k)).sort());
    assert.ok(Object.keys(keep(sa)).length > 300);
    assert.deepEqual(keep(sb), keep(sa));
    for (const path of ["/metrics/json", "/metrics/streaming", "/metrics/errors", "/metrics/costs", "/metrics/slo"]) {
      const [ja, jb] = await Promise.all([a.json(path), b.json(path)]);
      assert.deepEqual(stable(jb), stable(ja), path);
    }
  });
});
