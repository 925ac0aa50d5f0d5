// The README's quick start runs as written: its first ```js block, saved in this package (so
// "metricsd-client" resolves to it) and run with node against a real daemon.

import assert from "node:assert/strict";
import { readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";

import { daemonSkip, PKG, run, startDaemon, waitFor } from "./helpers.mjs";

const skip = daemonSkip();

describe("the README quick start", { skip }, () => {
  let daemon;
  const script = join(PKG, "test", "readme-quickstart.tmp.mjs");
  before(async () => {
    daemon = await startDaemon();
  });
  after(async () => {
    rmSync(script, { force: true });
    await daemon?.stop();
  });

  test("runs and its request and stream reach the daemon", async () => {
    const readme = readFileSync(join(PKG, "README.md"), "utf8");
    const block = /```js\n([\s\S]*?)```/.exec(readme);
    assert.ok(block, "no js block in README.md");
    writeFileSync(script, block[1]);
    const env = { ...process.env, METRICSD_INGEST: daemon.ingest[0] };
    const result = await run(process.execPath, [script], { env, cwd: PKG, timeoutMs: 20_000 });
    assert.equal(result.code, 0, result.stderr);
    assert.equal(result.stdout, "Hello from metricsd\n");
    const key = 'llm_requests_total{endpoint="/v1/chat/completions",model="gpt-4o",provider="openai",status="200"}';
    assert.equal(await daemon.waitSample(key, 2), 2); // the request and the finished stream
    const streaming = await waitFor(async () => {
      const view = await daemon.json("/metrics/streaming");
      return view.completed_streams === 1 ? view : null;
    });
    assert.ok(streaming, "the stream did not finish");
    assert.equal(streaming.ttft.count, 1);
    assert.ok(streaming.ttft.avg >= 40, `TTFT ${streaming.ttft.avg} ms`); // the first word: 50 ms
    assert.equal(streaming.itl.count, 2); // two gaps between three chunks
  });
});
