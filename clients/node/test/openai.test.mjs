// instrumentOpenAI against the official `openai` SDK talking to a local fake server (node:http)
// that speaks the chat completions API, in JSON and in server-sent events.

import assert from "node:assert/strict";
import { createServer } from "node:http";
import { after, before, describe, test } from "node:test";

import OpenAI from "openai";

import { createHash } from "node:crypto";

import { Emitter, instrumentOpenAI, uninstrumentOpenAI } from "../dist/index.js";
import { daemonSkip, PullSink, startDaemon, waitFor } from "./helpers.mjs";

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const GAP_MS = 40;
const KEY_ID = "k_" + createHash("sha256").update("sk-test").digest("hex").slice(0, 12);

function completion(model) {
  return {
    id: "chatcmpl-1",
    object: "chat.completion",
    created: 1_700_000_000,
    model: `${model}-2024-08-06`,
    choices: [{ index: 0, message: { role: "assistant", content: "Hi there" }, finish_reason: "stop", logprobs: null }],
    usage: {
      prompt_tokens: 12,
      completion_tokens: 5,
      total_tokens: 17,
      prompt_tokens_details: { cached_tokens: 4 },
      completion_tokens_details: { reasoning_tokens: 2 },
    },
  };
}

function chunk(model, delta, finish = null) {
  return { id: "chatcmpl-2", object: "chat.completion.chunk", created: 1_700_000_000, model,
           choices: [{ index: 0, delta, finish_reason: finish }] }; // prettier-ignore
}

/** A fake OpenAI server: model "rate-limited" → 429; "breaks" → the stream is cut. */
async function fakeServer() {
  const server = createServer(async (req, res) => {
    let raw = "";
    for await (const c of req) raw += c;
    const body = JSON.parse(raw || "{}");
    server.bodies.push(body);
    if (req.url !== "/v1/chat/completions") {
      res.writeHead(404).end();
      return;
    }
    if (body.model === "rate-limited") {
      res.writeHead(429, { "content-type": "application/json", "x-request-id": "req_429" });
      res.end(JSON.stringify({ error: { message: "Rate limit reached", type: "requests", code: "rate_limit_exceeded" } }));
      return;
    }
    if (!body.stream) {
      res.writeHead(200, { "content-type": "application/json", "x-request-id": "req_abc" });
      res.end(JSON.stringify(completion(body.model)));
      return;
    }
    res.writeHead(200, { "content-type": "text/event-stream", "x-request-id": "req_sse" });
    const send = (obj) => res.write(`data: ${JSON.stringify(obj)}\n\n`);
    send(chunk(body.model, { role: "assistant", content: "" }));
    const words = ["Hel", "lo", " world", "!"];
    for (let i = 0; i < words.length; i++) {
      await sleep(GAP_MS);
      if (body.model === "breaks" && i === 2) {
        res.socket.destroy();
        return;
      }
      send(chunk(body.model, { content: words[i] }));
    }
    send(chunk(body.model, {}, "stop"));
    if (body.stream_options?.include_usage) {
      send({ ...chunk(body.model, {}), choices: [], usage: { prompt_tokens: 9, completion_tokens: 6, total_tokens: 15 } });
    }
    res.write("data: [DONE]\n\n");
    res.end();
  });
  server.bodies = [];
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  return server;
}

describe("instrumentOpenAI", () => {
  let server;
  let sink;
  let em;
  let client;
  before(async () => {
    server = await fakeServer();
    sink = await new PullSink().bind();
    em = new Emitter({ endpoint: sink.endpoint, source: "chat", batchTimeoutMs: 10 });
    client = new OpenAI({ apiKey: "sk-test", baseURL: `http://127.0.0.1:${server.address().port}/v1`, maxRetries: 0, timeout: 5000 });
    assert.equal(instrumentOpenAI(client, em), client);
    instrumentOpenAI(client, em); // idempotent: not wrapped twice
  });
  after(async () => {
    await em.close();
    sink.close();
    await new Promise((r) => server.close(r));
  });

  test("a completion is one request with its usage; withResponse() still works", async () => {
    const t0 = Date.now() / 1000;
    const { data, response, request_id } = await client.chat.completions
      .create({ model: "gpt-4o", messages: [{ role: "user", content: "hi" }], user: "u-1" })
      .withResponse();
    assert.equal(data.choices[0].message.content, "Hi there");
    assert.equal(response.status, 200);
    assert.equal(request_id, "req_abc");
    await em.flush();
    const [row] = await sink.rows(1);
    assert.ok(row.duration_ms > 0 && row.duration_ms < 5000);
    assert.ok(row.ts >= t0);
    assert.deepEqual({ ...row, ts: 0, duration_ms: 0 }, {
      type: "request", source: "chat", endpoint: "/v1/chat/completions", model: "gpt-4o-2024-08-06",
      status: 200, input_tokens: 12, output_tokens: 5, cached_tokens: 4, cache_write_tokens: 0,
      reasoning_tokens: 2, finish_reason: "stop", request_id: "chatcmpl-1", user_id: "u-1",
      key_id: KEY_ID, ts: 0, duration_ms: 0,
    }); // prettier-ignore
    assert.equal(await sink.quiet(150), true, "recorded once");
  });

  test("a streamed completion: start, one timed token per output chunk, end; usage spread", async () => {
    const t0 = Date.now() / 1000;
    const stream = await client.chat.completions.create({
      model: "gpt-4o-mini",
      messages: [{ role: "user", content: "hi" }],
      stream: true,
      stream_options: { include_usage: true },
    });
    assert.equal(typeof stream.toReadableStream, "function", "the SDK's Stream is returned");
    let text = "";
    let usageChunks = 0;
    for await (const c of stream) {
      text += c.choices[0]?.delta?.content ?? "";
      if (c.usage) usageChunks++;
    }
    assert.equal(text, "Hello world!");
    assert.equal(usageChunks, 1, "the caller asked for usage: it sees the usage chunk");
    await em.flush();
    const rows = await sink.rows(6);
    const start = rows.find((r) => r.type === "stream.start");
    const tokens = rows.filter((r) => r.type === "stream.token");
    const end = rows.find((r) => r.type === "stream.end");
    assert.match(start.stream_id, /^oai-[0-9a-f]{32}$/);
    assert.deepEqual({ ...start, ts: 0, stream_id: "" }, {
      type: "stream.start", source: "chat", endpoint: "/v1/chat/completions", model: "gpt-4o-mini",
      prompt_tokens: 9, key_id: KEY_ID, request_id: "chatcmpl-2", ts: 0, stream_id: "",
    }); // prettier-ignore
    assert.ok(Math.abs(start.ts - t0) < 0.5);
    assert.deepEqual(tokens.map((t) => t.n), [1, 2, 1, 2], "usage.completion_tokens spread over the chunks");
    assert.ok(tokens.every((t) => t.stream_id === start.stream_id));
    assert.ok(tokens[0].ts - start.ts >= (GAP_MS - 5) / 1000, "TTFT covers the wait for the first token");
    for (let i = 1; i < tokens.length; i++) assert.ok(tokens[i].ts - tokens[i - 1].ts >= (GAP_MS - 10) / 1000);
    assert.deepEqual({ ...end, ts: 0 }, { type: "stream.end", source: "chat", stream_id: start.stream_id,
                                          status: "completed", finish_reason: "stop", ts: 0 }); // prettier-ignore
    assert.ok(end.ts >= tokens[3].ts);
  });

  test("includeUsage asks for the usage chunk and hides it from the caller", async () => {
    const other = instrumentOpenAI(
      new OpenAI({ apiKey: "sk-test", baseURL: `http://127.0.0.1:${server.address().port}/v1`, maxRetries: 0 }),
      em,
      { includeUsage: true, provider: "openai" },
    );
    const stream = await other.chat.completions.create({ model: "gpt-4o", messages: [], stream: true });
    const chunks = [];
    for await (const c of stream) chunks.push(c);
    assert.ok(chunks.every((c) => c.choices.length > 0), "no usage chunk seen");
    assert.deepEqual(server.bodies.at(-1).stream_options, { include_usage: true });
    await em.flush();
    const rows = await sink.rows(6);
    assert.equal(rows.find((r) => r.type === "stream.start").prompt_tokens, 9);
    assert.equal(rows.find((r) => r.type === "stream.start").provider, "openai");
    uninstrumentOpenAI(other);
    assert.equal(other.chat.completions.create, Object.getPrototypeOf(other.chat.completions).create);
  });

  test("an HTTP error is a request with its status and error class", async () => {
    await assert.rejects(
      client.chat.completions.create({ model: "rate-limited", messages: [] }),
      (err) => err.status === 429,
    );
    await assert.rejects(
      client.chat.completions.create({ model: "rate-limited", messages: [], stream: true }),
      (err) => err.status === 429,
    );
    await em.flush();
    const rows = await sink.rows(2);
    for (const row of rows) {
      assert.equal(row.type, "request");
      assert.equal(row.status, 429);
      assert.equal(row.error_type, "RateLimitError");
      assert.match(row.error_message, /Rate limit reached/);
      assert.equal(row.input_tokens, 0);
    }
    assert.deepEqual(rows.map((r) => r.streaming), [undefined, true]);
  });

  test("a connection error is an error event", async () => {
    const closed = await fakeServer();
    const port = closed.address().port;
    await new Promise((r) => closed.close(r));
    const bad = instrumentOpenAI(new OpenAI({ apiKey: "x", baseURL: `http://127.0.0.1:${port}/v1`, maxRetries: 0, timeout: 2000 }), em);
    await assert.rejects(bad.chat.completions.create({ model: "gpt-4o", messages: [] }));
    await em.flush();
    const [row] = await sink.rows(1);
    assert.equal(row.type, "error");
    assert.equal(row.error_type, "APIConnectionError");
    assert.equal(row.model, "gpt-4o");
  });

  test("a stream cut by the server ends failed; a consumer that stops ends cancelled", async () => {
    const broken = await client.chat.completions.create({ model: "breaks", messages: [], stream: true });
    await assert.rejects(async () => {
      for await (const _ of broken) {
        // consume
      }
    });
    const stopped = await client.chat.completions.create({ model: "gpt-4o", messages: [], stream: true });
    for await (const c of stopped) if (c.choices[0]?.delta?.content) break;
    await em.flush();
    const rows = await sink.rows(2 + 2 + 2 + 1);
    const ends = rows.filter((r) => r.type === "stream.end").sort((a, b) => a.status.localeCompare(b.status));
    assert.deepEqual(ends.map((r) => r.status), ["cancelled", "failed"]);
    assert.equal(typeof ends[1].error_type, "string");
  });
});

describe("instrumentOpenAI into the real daemon", { skip: daemonSkip() }, () => {
  test("streamed completions show up in the daemon's streaming numbers", async () => {
    const server = await fakeServer();
    const daemon = await startDaemon();
    try {
      const em = new Emitter({ endpoint: daemon.ingest[0], source: "chat" });
      const client = instrumentOpenAI(
        new OpenAI({ apiKey: "sk", baseURL: `http://127.0.0.1:${server.address().port}/v1`, maxRetries: 0 }),
        em,
      );
      for (let i = 0; i < 2; i++) {
        const s = await client.chat.completions.create({ model: "gpt-4o", messages: [], stream: true });
        for await (const _ of s) {
          // consume
        }
      }
      await client.chat.completions.create({ model: "gpt-4o", messages: [] });
      assert.equal(await em.close(), true);
      const streaming = await waitFor(async () => {
        const s = await daemon.json("/metrics/streaming");
        return s.completed_streams === 2 ? s : null;
      }, 10_000);
      assert.ok(streaming, "two completed streams");
      assert.equal(streaming.total_tokens_generated, 8);
      assert.equal(streaming.ttft.count, 2);
      assert.ok(streaming.ttft.min >= GAP_MS - 5, `ttft ${streaming.ttft.min} ms`);
      // The streams' outcomes (model from the chunks) and the completion (the response's model).
      const key = (model) => `llm_requests_total{endpoint="/v1/chat/completions",model="${model}",provider="openai",status="200"}`;
      assert.equal(await daemon.waitSample(key("gpt-4o"), 2), 2);
      assert.equal(await daemon.waitSample(key("gpt-4o-2024-08-06"), 1), 1);
    } finally {
      await daemon.stop();
      await new Promise((r) => server.close(r));
    }
  });
});
