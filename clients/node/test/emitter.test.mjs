// The Emitter against a real ZeroMQ PULL socket: exact rows, batching, flushing, drops and
// their reports, lifecycle, never throwing, exit flushing, and the stream() helper.
// Every receive has a timeout.

import assert from "node:assert/strict";
import { rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";

import { Emitter, DEFAULT_ENDPOINT } from "../dist/index.js";
import { PKG, PullSink, run } from "./helpers.mjs";

const NO_DAEMON = "tcp://127.0.0.1:9"; // the discard port: nothing listens for ZeroMQ there
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

let pull;
before(async () => {
  pull = await new PullSink().bind();
});
after(() => pull.close());

/** A fresh sink per test that needs exact frame boundaries. */
async function withSink(fn) {
  const sink = await new PullSink().bind();
  try {
    return await fn(sink);
  } finally {
    sink.close();
  }
}

describe("events", () => {
  test("rows on the wire are the calls, with the emitter's defaults", async () => {
    await withSink(async (sink) => {
      const em = new Emitter({ endpoint: sink.endpoint, source: "api" });
      em.request(120.5, { endpoint: "/v1/chat", model: "gpt-4o", input_tokens: 812, output_tokens: 164, ts: 1.5 });
      em.error("timeout", { model: "gpt-4o", ts: 2.5 });
      em.streamStart("s", { model: "m", ts: 3.5 });
      em.streamToken("s", { ts: 4.5 });
      em.streamEnd("s", { ts: 5.5 });
      em.streamBackpressure("s", { buffer_size: 3, ts: 6.5 });
      em.cache(true, { total_tokens: 10, ts: 7.5 });
      em.queue(4, { ts: 8.5 });
      em.usage({ images: new Map([["size", "1024x1024"], ["n", 2]]), ts: 9.5 });
      em.metric("x", "gauge", 2, { labels: { a: "b" }, ts: 10.5 });
      assert.equal(await em.flush(), true);
      const rows = await sink.rows(10);
      const byType = Object.fromEntries(rows.map((r) => [r.type, r]));
      assert.deepEqual(byType.request, {
        type: "request", source: "api", status: 200, endpoint: "/v1/chat", model: "gpt-4o",
        ts: 1.5, duration_ms: 120.5, input_tokens: 812, output_tokens: 164, cached_tokens: 0,
        cache_write_tokens: 0, reasoning_tokens: 0,
      }); // prettier-ignore
      assert.deepEqual(byType.error, { type: "error", source: "api", error_type: "timeout", model: "gpt-4o", ts: 2.5 });
      assert.deepEqual(byType["stream.token"], { type: "stream.token", source: "api", stream_id: "s", ts: 4.5, n: 1 });
      assert.deepEqual(byType["stream.end"], { type: "stream.end", source: "api", status: "completed", ts: 5.5, stream_id: "s" });
      assert.deepEqual(byType.queue, { type: "queue", source: "api", queue: "default", ts: 8.5, depth: 4 });
      assert.deepEqual(byType.usage.images, { size: "1024x1024", n: 2 });
      assert.deepEqual(byType.metric.labels, { a: "b" });
      assert.equal(em.sent, 10);
      assert.equal(em.dropped, 0);
      await em.close();
    });
  });

  test("ts defaults to the wall clock, with sub-millisecond resolution", async () => {
    await withSink(async (sink) => {
      const em = new Emitter({ endpoint: sink.endpoint });
      const before = Date.now() / 1000;
      for (let i = 0; i < 50; i++) em.streamToken("t");
      const after = Date.now() / 1000;
      await em.close();
      const ts = (await sink.rows(50)).map((r) => r.ts);
      for (const t of ts) assert.ok(t >= before - 0.002 && t <= after + 0.002, `${t} not in [${before}, ${after}]`);
      assert.ok(ts.some((t) => Math.round(t * 1000) !== t * 1000), "only whole milliseconds");
      for (let i = 1; i < ts.length; i++) assert.ok(ts[i] >= ts[i - 1]);
    });
  });

  test("null means not sent; undefined means the default", async () => {
    await withSink(async (sink) => {
      const em = new Emitter({ endpoint: sink.endpoint });
      em.request(1, { status: null, input_tokens: null, model: undefined, ts: 1 });
      await em.close();
      const [row] = await sink.rows(1);
      assert.equal("status" in row, false);
      assert.equal("input_tokens" in row, false);
      assert.equal("model" in row, false);
      assert.equal(row.output_tokens, 0);
    });
  });

  test("the default endpoint is $METRICSD_INGEST, else tcp://127.0.0.1:5557", () => {
    const saved = process.env.METRICSD_INGEST;
    try {
      delete process.env.METRICSD_INGEST;
      assert.equal(new Emitter().endpoint, DEFAULT_ENDPOINT);
      process.env.METRICSD_INGEST = "tcp://127.0.0.1:6000";
      assert.equal(new Emitter().endpoint, "tcp://127.0.0.1:6000");
      assert.equal(new Emitter({ endpoint: "ipc:///tmp/x" }).endpoint, "ipc:///tmp/x");
    } finally {
      if (saved === undefined) delete process.env.METRICSD_INGEST;
      else process.env.METRICSD_INGEST = saved;
    }
  });
});

describe("batching and flushing", () => {
  test("labels go to const, one columnar batch per label set", async () => {
    await withSink(async (sink) => {
      const em = new Emitter({ endpoint: sink.endpoint, source: "s" });
      for (let i = 0; i < 300; i++) em.request(i + 0.5, { model: i % 3 ? "a" : "b", endpoint: "/e", ts: 1 + i });
      await em.close();
      await sink.rows(300);
      assert.equal(sink.frames.length, 1);
      const { decode } = await import("@msgpack/msgpack");
      const batches = decode(sink.frames[0].data);
      assert.equal(batches.length, 2);
      for (const b of batches) {
        assert.deepEqual(Object.keys(b), ["v", "type", "cols", "const"]);
        assert.equal(b.const.endpoint, "/e");
        assert.ok(["a", "b"].includes(b.const.model));
        assert.deepEqual(Object.keys(b.cols), ["ts", "duration_ms"]);
      }
    });
  });

  test("a full batch is sent without waiting for the timer", async () => {
    await withSink(async (sink) => {
      const em = new Emitter({ endpoint: sink.endpoint, batchSize: 100, batchTimeoutMs: 60_000 });
      for (let i = 0; i < 100; i++) em.queue(i);
      const t0 = Date.now();
      await sink.rows(100, 3000);
      assert.ok(Date.now() - t0 < 2000);
      for (let i = 0; i < 99; i++) em.queue(i); // one short of a batch: waits for the timer
      assert.equal(await sink.quiet(300), true);
      await em.close();
      await sink.rows(99);
    });
  });

  test("the timer sends a partial batch after batchTimeoutMs", async () => {
    await withSink(async (sink) => {
      const em = new Emitter({ endpoint: sink.endpoint, batchTimeoutMs: 30 });
      em.queue(1);
      const t0 = Date.now();
      await sink.rows(1, 3000);
      const waited = Date.now() - t0;
      assert.ok(waited < 1000, `${waited} ms`);
      em.queue(2);
      await sink.rows(1, 3000); // the timer is re-armed by the next event
      await em.close();
    });
  });

  test("frames stay under 10 000 events and 1 MiB", async () => {
    await withSink(async (sink) => {
      const em = new Emitter({ endpoint: sink.endpoint, batchSize: 1e9, batchTimeoutMs: 60_000 });
      const big = "x".repeat(200);
      for (let i = 0; i < 25_000; i++) em.request(i, { error_message: big + i, ts: i });
      assert.equal(await em.flush(10_000), true);
      await sink.rows(25_000, 10_000);
      assert.ok(sink.frames.length >= 5);
      for (const f of sink.frames) {
        assert.ok(f.rows.length <= 10_000);
        assert.ok(f.data.length <= 1 << 20);
      }
      await em.close();
    });
  });

  test("flush() waits for what was recorded before it; close() is idempotent", async () => {
    await withSink(async (sink) => {
      const em = new Emitter({ endpoint: sink.endpoint, batchTimeoutMs: 60_000 });
      em.cache(false);
      assert.equal(await em.flush(), true);
      assert.equal(em.sent, 1);
      assert.equal(em.buffered, 0);
      assert.equal(await em.close(), true);
      assert.equal(await em.close(), true);
      assert.equal(await em.flush(), true);
      em.cache(true); // after close: dropped and counted
      assert.equal(em.dropped, 1);
      await sink.rows(1);
    });
  });
});

describe("drops", () => {
  test("a full buffer drops and counts; the count is reported with the next frame", async () => {
    await withSink(async (sink) => {
      const em = new Emitter({ endpoint: sink.endpoint, source: "w", maxBuffer: 10, batchSize: 1e9, batchTimeoutMs: 60_000 });
      for (let i = 0; i < 25; i++) em.queue(i);
      assert.equal(em.dropped, 15);
      assert.equal(em.buffered, 10);
      await em.flush();
      await sink.rows(10);
      assert.deepEqual(sink.clientReports(), [{ type: "client", dropped: 15, source: "w" }]);
      em.queue(1);
      await em.close();
      await sink.rows(1);
      assert.equal(sink.clientReports().length, 1, "reported once");
    });
  });

  test("frames refused at the high-water mark are dropped, counted and reported later", async () => {
    // No peer reads: with sndhwm 1 the first frame is queued and the next ones would block.
    const em = new Emitter({ endpoint: NO_DAEMON, source: "hwm", sndhwm: 1, batchSize: 10, batchTimeoutMs: 60_000 });
    for (let round = 0; round < 5; round++) {
      for (let i = 0; i < 10; i++) em.queue(i);
      await em.flush();
    }
    assert.ok(em.dropped >= 30, `dropped ${em.dropped}`);
    assert.equal(em.sent + em.dropped, 50);
    await em.close(200);
  });

  test("no daemon at all: nothing throws, close() returns quickly", async () => {
    const em = new Emitter({ endpoint: NO_DAEMON });
    for (let i = 0; i < 1000; i++) em.request(i);
    const t0 = Date.now();
    assert.equal(await em.close(), true);
    assert.ok(Date.now() - t0 < 2000);
  });

  test("a bad endpoint warns once, drops and counts, never throws", async () => {
    const warnings = [];
    const onWarning = (w) => warnings.push(w);
    process.on("warning", onWarning);
    try {
      const em = new Emitter({ endpoint: "nonsense://nowhere" });
      em.request(1);
      await em.flush();
      em.request(2);
      await em.flush();
      assert.equal(em.dropped, 2);
      await em.close();
      await sleep(10);
      assert.equal(warnings.filter((w) => w.name === "MetricsdWarning").length, 1);
    } finally {
      process.off("warning", onWarning);
    }
  });

  test("values that cannot be packed are dropped alone; nothing throws", async () => {
    await withSink(async (sink) => {
      const em = new Emitter({ endpoint: sink.endpoint });
      const circular = {};
      circular.self = circular;
      em.request(1, { model: "ok", ts: 1 });
      em.request(2, { model: () => 1, ts: 2 }); // a function: unpackable
      em.request(3, { model: "ok", error_message: Symbol("s"), ts: 3 });
      em.metric("m", "gauge", 1, { labels: circular, ts: 4 });
      em.request(5, { model: "ok", input_tokens: 12n, ts: 5 });
      em.request(undefined);
      em.queue();
      await em.close();
      const rows = await sink.rows(4);
      assert.deepEqual(rows.filter((r) => r.model === "ok").map((r) => r.duration_ms).sort(), [1, 5]);
      assert.equal(em.dropped, 3);
    });
  });
});

describe("process exit", () => {
  const script = (body) => {
    const path = join(tmpdir(), `metricsd-exit-${process.pid}-${Math.random().toString(36).slice(2)}.mjs`);
    writeFileSync(path, `import { Emitter } from ${JSON.stringify(join(PKG, "dist", "index.js"))};\n${body}\n`);
    return path;
  };

  test("events are flushed when the process ends on its own (beforeExit)", async () => {
    await withSink(async (sink) => {
      const path = script(`
        const em = new Emitter({ endpoint: process.argv[2], batchTimeoutMs: 60000 });
        for (let i = 0; i < 5; i++) em.request(i);`);
      try {
        const { code, stderr } = await run(process.execPath, [path, sink.endpoint], { timeoutMs: 10_000 });
        assert.equal(code, 0, stderr);
        assert.equal((await sink.rows(5, 5000)).length, 5);
      } finally {
        rmSync(path, { force: true });
      }
    });
  });

  test("events are handed to the socket on process.exit() when it is open", async () => {
    await withSink(async (sink) => {
      const path = script(`
        const em = new Emitter({ endpoint: process.argv[2], batchTimeoutMs: 60000 });
        em.request(0);
        await em.flush();
        for (let i = 1; i < 4; i++) em.request(i);
        process.exit(0);`);
      try {
        const { code, stderr } = await run(process.execPath, [path, sink.endpoint], { timeoutMs: 10_000 });
        assert.equal(code, 0, stderr);
        assert.equal((await sink.rows(4, 5000)).length, 4);
      } finally {
        rmSync(path, { force: true });
      }
    });
  });

  test("a process with an emitter and no daemon still exits promptly", async () => {
    const path = script(`
      const em = new Emitter({ endpoint: "${NO_DAEMON}" });
      em.request(1);`);
    try {
      const t0 = Date.now();
      const { code } = await run(process.execPath, [path], { timeoutMs: 10_000 });
      assert.equal(code, 0);
      assert.ok(Date.now() - t0 < 5000);
    } finally {
      rmSync(path, { force: true });
    }
  });
});

describe("stream()", () => {
  async function* chunks(n, gapMs, failAt = -1) {
    for (let i = 0; i < n; i++) {
      await sleep(gapMs);
      if (i === failAt) throw new TypeError("upstream broke");
      yield { i, text: `t${i}` };
    }
  }

  test("start, one token per chunk timed on arrival, completed end", async () => {
    await withSink(async (sink) => {
      const em = new Emitter({ endpoint: sink.endpoint });
      const start = Date.now() / 1000;
      const seen = [];
      for await (const c of em.stream(chunks(4, 40), { stream_id: "s1", model: "m", prompt_tokens: 7, ts: start, finishReason: (c) => (c.i === 3 ? "stop" : undefined) })) {
        seen.push(c.i);
      }
      assert.deepEqual(seen, [0, 1, 2, 3]);
      await em.close();
      const rows = await sink.rows(6);
      const startRow = rows.find((r) => r.type === "stream.start");
      assert.deepEqual({ ...startRow, ts: undefined }, { type: "stream.start", source: "default", stream_id: "s1", model: "m", prompt_tokens: 7, ts: undefined });
      assert.equal(startRow.ts, start);
      const tokens = rows.filter((r) => r.type === "stream.token").map((r) => r.ts);
      assert.equal(tokens.length, 4);
      assert.ok(tokens[0] - start >= 0.03, `ttft ${tokens[0] - start}`);
      for (let i = 1; i < 4; i++) assert.ok(tokens[i] - tokens[i - 1] >= 0.03, `gap ${tokens[i] - tokens[i - 1]}`);
      const end = rows.find((r) => r.type === "stream.end");
      assert.equal(end.status, "completed");
      assert.equal(end.finish_reason, "stop");
      assert.ok(end.ts >= tokens[3]);
    });
  });

  test("a source that throws ends failed and re-throws; a consumer that stops ends cancelled", async () => {
    await withSink(async (sink) => {
      const em = new Emitter({ endpoint: sink.endpoint });
      await assert.rejects(async () => {
        for await (const _ of em.stream(chunks(5, 1, 2), { stream_id: "f" })) {
          // consume
        }
      }, TypeError);
      for await (const c of em.stream(chunks(5, 1), { stream_id: "c", tokens: (x) => x.i + 1, text: (x) => x.text })) {
        if (c.i === 1) break;
      }
      await em.close();
      const rows = await sink.rows(2 + 2 + 2 + 2);
      const ends = Object.fromEntries(rows.filter((r) => r.type === "stream.end").map((r) => [r.stream_id, r]));
      assert.equal(ends.f.status, "failed");
      assert.equal(ends.f.error_type, "TypeError");
      assert.equal(ends.f.error_message, "upstream broke");
      assert.equal(ends.c.status, "cancelled");
      const ctokens = rows.filter((r) => r.type === "stream.token" && r.stream_id === "c");
      assert.deepEqual(ctokens.map((r) => [r.n, r.text]), [[1, "t0"], [2, "t1"]]);
    });
  });

  test("works on sync iterables and with a default stream id", async () => {
    await withSink(async (sink) => {
      const em = new Emitter({ endpoint: sink.endpoint });
      const out = [];
      for await (const c of em.stream(["a", "b"])) out.push(c);
      assert.deepEqual(out, ["a", "b"]);
      await em.close();
      const rows = await sink.rows(4);
      const ids = new Set(rows.map((r) => r.stream_id));
      assert.equal(ids.size, 1);
      assert.match([...ids][0], /^[0-9a-f-]{36}$/);
    });
  });
});
