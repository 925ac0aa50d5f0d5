// A deterministic mix of every event type, as logical events ({type, …fields}), for sending the
// same traffic from both emitters. Not a test file itself.

/** Events with explicit timestamps from `base` (Unix seconds). */
export function workload(base) {
  const events = [];
  const models = ["gpt-4o", "gpt-4o-mini", "claude-3-5-sonnet-20241022"];
  const endpoints = ["/v1/chat/completions", "/v1/embeddings"];
  let t = base;
  const tick = () => (t += 0.0078125);
  for (let i = 0; i < 300; i++) {
    const failed = i % 17 === 0;
    const ev = {
      type: "request",
      ts: tick(),
      duration_ms: 40 + ((i * 37) % 900) + 0.25,
      endpoint: endpoints[i % 2],
      model: models[i % 3],
      status: failed ? (i % 2 ? 429 : 500) : 200,
      input_tokens: 100 + ((i * 13) % 400),
      output_tokens: failed ? 0 : 20 + ((i * 7) % 300),
      cached_tokens: i % 5 === 0 ? 64 : 0,
    };
    if (failed) {
      ev.error_type = i % 2 ? "rate_limit" : "server_error";
      ev.error_message = `upstream said no (attempt ${i})`;
    }
    if (i % 4 === 0) ev.api_key = `sk-test-${i % 3}`;
    if (i % 6 === 0) ev.finish_reason = "stop";
    if (i % 10 === 3) {
      ev.streaming = true;
      ev.ttft_ms = 80 + (i % 50);
    }
    if (i % 9 === 0) ev.queue_ms = 3.5;
    if (i % 25 === 0) ev.cost_usd = 0.002;
    events.push(ev);
  }
  for (let i = 0; i < 20; i++) {
    events.push({ type: "error", ts: tick(), error_type: i % 3 ? "timeout" : "connection_reset",
                  model: models[i % 3], endpoint: endpoints[0], status: i % 3 ? 504 : 502,
                  error_message: `request req-${1000 + i} failed after ${i} ms` }); // prettier-ignore
  }
  for (let s = 0; s < 10; s++) {
    const id = `stream-${s}`;
    const model = models[s % 2];
    events.push({ type: "stream.start", ts: tick(), stream_id: id, model, endpoint: endpoints[0],
                  prompt_tokens: 50 + s, provider: "openai" }); // prettier-ignore
    const start = t;
    for (let k = 0; k < 5 + s; k++) {
      events.push({ type: "stream.token", ts: start + 0.1 + 0.02 * k + (k % 3) * 0.005, stream_id: id,
                    n: 1 + (k % 2) }); // prettier-ignore
    }
    if (s === 4) events.push({ type: "stream.backpressure", ts: start + 0.15, stream_id: id, buffer_size: 12 });
    const status = s === 7 ? "failed" : s === 8 ? "cancelled" : "completed";
    const end = { type: "stream.end", ts: start + 0.2 + 0.02 * (5 + s), stream_id: id, status };
    if (status === "completed") end.finish_reason = "stop";
    if (status === "failed") end.error_type = "upstream_reset";
    events.push(end);
    t = start + 0.5;
  }
  for (let i = 0; i < 30; i++) {
    events.push({ type: "cache", ts: tick(), hit: i % 3 !== 0, total_tokens: 1000 + i,
                  matched_tokens: i % 3 ? 512 : 0, model: models[i % 3], endpoint: endpoints[0] }); // prettier-ignore
  }
  for (let i = 0; i < 10; i++) {
    events.push({ type: "queue", ts: tick(), depth: i, queue: i % 2 ? "gpu" : "cpu", capacity: 32 });
  }
  for (let i = 0; i < 5; i++) {
    events.push({ type: "usage", ts: tick(), model: "dall-e-3", images: { size: "1024x1024", quality: i % 2 ? "hd" : "standard", n: 1 + i },
                  api_key: "sk-test-0" }); // prettier-ignore
  }
  for (let i = 0; i < 20; i++) {
    const kind = ["counter", "gauge", "histogram"][i % 3];
    events.push({ type: "metric", ts: tick(), name: `app_${kind}`, kind, value: i + 0.5,
                  labels: { provider: i % 2 ? "openai" : "anthropic" } }); // prettier-ignore
  }
  events.push({ type: "metric", ts: tick(), name: "llm_circuit_breaker_open", kind: "gauge", value: 1, labels: { provider: "openai" } });
  return events;
}

/** Events by type, for the expected daemon counts. */
export function countByType(events) {
  const out = {};
  for (const e of events) out[e.type] = (out[e.type] ?? 0) + 1;
  return out;
}

/** Sends `events` (JSON on stdin) with the Python emitter; prints {sent, dropped}. */
export const PYTHON_SENDER = `
import json, sys
from metricsd_client import Emitter
METHODS = {"stream.start": "stream_start", "stream.token": "stream_token",
           "stream.end": "stream_end", "stream.backpressure": "stream_backpressure"}
events = json.load(sys.stdin)
em = Emitter(sys.argv[1], source=sys.argv[2])
for e in events:
    e = dict(e)
    t = e.pop("type")
    getattr(em, METHODS.get(t, t))(**e)
ok = em.close(timeout=10)
print(json.dumps({"ok": ok, "sent": em.sent, "dropped": em.dropped}))
`;
