// Cost of the Node emitter (clients/node): per call on the caller's thread, and throughput.
//
// Usage: node benchmarks/bench_node_emitter.mjs [--n N] [--chunk C] [--reps R] [--events E]
//                                               [--no-daemon] [--no-python] [--json]
// (build the package first: cd clients/node && npm ci && npm run build)
//
// 1. Per call, as benchmarks/bench_emitter.py does for Python: N calls per run in timed bursts
//    of C (default 1 000); between bursts, outside the timing, storage is drained; runs are
//    interleaved, the best of R (default 10) is kept, the empty loop's cost is subtracted.
//    - array.push: `buf.push([12.5, "/v1/chat/completions", "gpt-4o", 100, 50])`, inline;
//    - minimal function: `f(12.5, {endpoint, model, input_tokens, output_tokens})` appending
//      those values as an array;
//    - emitter.request: the real method, same arguments; its emitter points where no daemon
//      listens, with batchSize and maxBuffer above C and a one-hour timer, drained between
//      bursts by swapping its buffer (the caller's cost alone);
//    - emitter.request (defaults): default settings; the event loop turns between bursts, so
//      its flusher packs and sends (frames refused at the high-water mark: no daemon).
// 2. Throughput: E events (default 500 000) recorded in bursts of C, the event loop turning
//    between bursts (as in a server), then flush(): events handed to ZeroMQ per second of wall
//    time, with no daemon (frames past the high-water mark are dropped: packing is still paid)
//    and with a real daemon (`python -m metricsd serve`; its received count is checked). The
//    Python emitter runs the same loop in a subprocess against the same daemon, for comparison.

import { spawn } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { arch, cpus, tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { setImmediate as turn } from "node:timers/promises";

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const DIST = join(ROOT, "clients", "node", "dist", "index.js");
if (!existsSync(DIST)) {
  console.error("build the package first: cd clients/node && npm ci && npm run build");
  process.exit(2);
}
const { Emitter } = await import(DIST);

const ENDPOINT = "/v1/chat/completions";
const MODEL = "gpt-4o";
const NO_DAEMON = "tcp://127.0.0.1:9"; // the discard port: nothing listens for ZeroMQ there

function parseArgs(argv) {
  const args = { n: 200_000, chunk: 1000, reps: 10, events: 500_000, daemon: true, python: true, json: false };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === "--n") args.n = Number(argv[++i]);
    else if (a === "--chunk") args.chunk = Number(argv[++i]);
    else if (a === "--reps") args.reps = Number(argv[++i]);
    else if (a === "--events") args.events = Number(argv[++i]);
    else if (a === "--no-daemon") args.daemon = false;
    else if (a === "--no-python") args.python = false;
    else if (a === "--json") args.json = true;
    else {
      console.error(`unknown argument ${a}`);
      process.exit(2);
    }
  }
  return args;
}

const args = parseArgs(process.argv.slice(2));
const CHUNK = Math.max(1, args.chunk);
const ns = () => process.hrtime.bigint();

/** Run n calls as bursts of CHUNK, draining in between; return the timed ns. */
async function bursts(n, burst, drain) {
  let total = 0n;
  for (let done = 0; done < n; done += CHUNK) {
    const k = Math.min(CHUNK, n - done);
    total += burst(k);
    await drain();
  }
  return Number(total);
}

// --- per-call candidates ------------------------------------------------------------------

function loopEmpty(k) {
  const t0 = ns();
  for (let i = 0; i < k; i++) {
    // nothing
  }
  return ns() - t0;
}

let pushBuf = [];
function loopPush(k) {
  const buf = pushBuf;
  const t0 = ns();
  for (let i = 0; i < k; i++) buf.push([12.5, ENDPOINT, MODEL, 100, 50]);
  return ns() - t0;
}

let minimalBuf = [];
function minimal(duration_ms, o) {
  minimalBuf.push([duration_ms, o.endpoint, o.model, o.input_tokens, o.output_tokens]);
}

// One loop per candidate (no shared call site), as an application's call site would be.
function loopMinimal(k) {
  const t0 = ns();
  for (let i = 0; i < k; i++) minimal(12.5, { endpoint: ENDPOINT, model: MODEL, input_tokens: 100, output_tokens: 50 });
  return ns() - t0;
}

function loopEmitter(em) {
  return (k) => {
    const t0 = ns();
    for (let i = 0; i < k; i++) em.request(12.5, { endpoint: ENDPOINT, model: MODEL, input_tokens: 100, output_tokens: 50 });
    return ns() - t0;
  };
}

async function perCall() {
  const n = args.n;
  const quiet = new Emitter({ endpoint: NO_DAEMON, source: "bench", batchSize: CHUNK + 1, batchTimeoutMs: 3_600_000,
                              maxBuffer: CHUNK + 1, sndhwm: 1 }); // prettier-ignore
  const defaults = new Emitter({ endpoint: NO_DAEMON, source: "bench-defaults" });
  const candidates = {
    "array.push": [loopPush, () => void (pushBuf = [])],
    "minimal function": [loopMinimal, () => void (minimalBuf = [])],
    "emitter.request": [loopEmitter(quiet), () => void (quiet._buf = [])],
    "emitter.request (defaults)": [loopEmitter(defaults), () => turn()],
  };
  for (const [burst, drain] of Object.values(candidates)) await bursts(Math.min(n, 20_000), burst, drain); // warm-up
  const best = Object.fromEntries(Object.keys(candidates).map((k) => [k, Infinity]));
  let empty = Infinity;
  for (let r = 0; r < args.reps; r++) {
    empty = Math.min(empty, (await bursts(n, loopEmpty, () => undefined)) / n);
    for (const [name, [burst, drain]] of Object.entries(candidates)) {
      best[name] = Math.min(best[name], (await bursts(n, burst, drain)) / n);
    }
  }
  const net = Object.fromEntries(Object.entries(best).map(([k, v]) => [k, Math.max(v - empty, 0)]));
  const hotPathDrops = quiet._nbufdrop;
  await quiet.close(1000);
  await defaults.close(1000);
  return { loop_overhead_ns: round(empty), ns_per_call: mapValues(net, round), hot_path_drops: hotPathDrops };
}

// --- throughput ---------------------------------------------------------------------------

async function throughput(endpoint, events) {
  const em = new Emitter({ endpoint, source: "bench-throughput" });
  const t0 = ns();
  for (let done = 0; done < events; done += CHUNK) {
    const k = Math.min(CHUNK, events - done);
    for (let i = 0; i < k; i++) {
      em.request(12.5 + (i & 7), { endpoint: ENDPOINT, model: MODEL, input_tokens: 100 + (i & 15), output_tokens: 50 });
    }
    await turn();
  }
  await em.flush(60_000);
  const seconds = Number(ns() - t0) / 1e9;
  const result = { events, seconds: round(seconds, 3), sent: em.sent, dropped: em.dropped,
                   events_per_second: Math.round(em.sent / seconds), recorded_per_second: Math.round(events / seconds) }; // prettier-ignore
  await em.close(2000);
  return result;
}

const PYTHON_THROUGHPUT = `
import json, sys, time
from metricsd_client import Emitter
endpoint, events, chunk = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
em = Emitter(endpoint, source="bench-python")
t0 = time.perf_counter()
done = 0
while done < events:
    k = min(chunk, events - done)
    for i in range(k):
        em.request(12.5 + (i & 7), endpoint="${ENDPOINT}", model="${MODEL}", input_tokens=100 + (i & 15), output_tokens=50)
    time.sleep(0)
    done += k
em.flush(60)
seconds = time.perf_counter() - t0
print(json.dumps({"events": events, "seconds": round(seconds, 3), "sent": em.sent, "dropped": em.dropped,
                  "events_per_second": round(em.sent / seconds), "recorded_per_second": round(events / seconds)}))
em.close(2)
`;

function python() {
  const p = process.env.METRICSD_PYTHON || join(ROOT, ".venv", "bin", "python");
  return existsSync(p) ? p : null;
}

function runPython(code, argv, timeoutMs = 120_000) {
  return new Promise((resolveRun, reject) => {
    const proc = spawn(python(), ["-c", code, ...argv], { stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    let err = "";
    proc.stdout.on("data", (d) => (out += d));
    proc.stderr.on("data", (d) => (err += d));
    const timer = setTimeout(() => proc.kill("SIGKILL"), timeoutMs);
    proc.on("exit", (code) => {
      clearTimeout(timer);
      if (code === 0) resolveRun(JSON.parse(out.trim().split("\n").pop()));
      else reject(new Error(`python exited ${code}: ${err}`));
    });
  });
}

async function startDaemon() {
  const dir = mkdtempSync(join(tmpdir(), "metricsd-bench-"));
  const ready = join(dir, "ready.json");
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("METRICSD_")));
  const proc = spawn(python(), ["-m", "metricsd", "serve", "--http", "127.0.0.1:0", "--ingest", "tcp://127.0.0.1:0",
                                "--tick", "0.5", "--ready-file", ready], { cwd: dir, env, stdio: "ignore" }); // prettier-ignore
  const deadline = Date.now() + 20_000;
  while (Date.now() < deadline) {
    if (existsSync(ready)) {
      try {
        const info = JSON.parse(readFileSync(ready, "utf8"));
        return { proc, dir, ...info };
      } catch {
        // being written
      }
    }
    if (proc.exitCode !== null) break;
    await new Promise((r) => setTimeout(r, 50));
  }
  proc.kill("SIGKILL");
  throw new Error("daemon did not become ready");
}

async function received(daemon, source) {
  const text = await (await fetch(`${daemon.http}/metrics`, { signal: AbortSignal.timeout(5000) })).text();
  let total = 0;
  for (const line of text.split("\n")) {
    if (line.startsWith('metricsd_events_received_total{type="request"}')) total += Number(line.split(" ").pop());
  }
  return total;
}

async function waitReceived(daemon, expected, timeoutMs = 120_000) {
  const deadline = Date.now() + timeoutMs;
  let got = 0;
  while (Date.now() < deadline) {
    got = await received(daemon);
    if (got >= expected) break;
    await new Promise((r) => setTimeout(r, 200));
  }
  return got;
}

// --- main ---------------------------------------------------------------------------------

function round(x, digits = 1) {
  const f = 10 ** digits;
  return Math.round(x * f) / f;
}

function mapValues(o, f) {
  return Object.fromEntries(Object.entries(o).map(([k, v]) => [k, f(v)]));
}

const result = {
  node: process.version,
  machine: `${arch()}, ${cpus().length} cores`,
  n: args.n,
  chunk: CHUNK,
  reps: args.reps,
  per_call: await perCall(),
  throughput: { no_daemon: await throughput(NO_DAEMON, args.events) },
};
const pc = result.per_call.ns_per_call;
result.per_call.ratio_emitter_over_array_push = round(pc["emitter.request"] / pc["array.push"], 2);
result.per_call.ratio_emitter_over_minimal_function = round(pc["emitter.request"] / pc["minimal function"], 2);

if (args.daemon && python()) {
  const daemon = await startDaemon();
  try {
    const node = await throughput(daemon.ingest[0], args.events);
    node.daemon_received = await waitReceived(daemon, node.sent);
    result.throughput.daemon_node = node;
    if (args.python) {
      const py = await runPython(PYTHON_THROUGHPUT, [daemon.ingest[0], String(args.events), String(CHUNK)]);
      py.daemon_received = (await waitReceived(daemon, node.daemon_received + py.sent)) - node.daemon_received;
      result.throughput.daemon_python = py;
    }
  } finally {
    daemon.proc.kill("SIGTERM");
    await new Promise((r) => {
      const timer = setTimeout(() => daemon.proc.kill("SIGKILL"), 10_000);
      daemon.proc.once("exit", () => {
        clearTimeout(timer);
        r();
      });
    });
    rmSync(daemon.dir, { recursive: true, force: true });
  }
} else if (args.daemon) {
  result.throughput.daemon_node = "skipped: no Python with metricsd (.venv or $METRICSD_PYTHON)";
}

if (args.json) {
  console.log(JSON.stringify(result, null, 2));
} else {
  console.log(`Node ${result.node} (${result.machine}), n=${args.n}, best of ${args.reps}, ` +
              `loop overhead ${result.per_call.loop_overhead_ns} ns subtracted`); // prettier-ignore
  console.log(`${"candidate".padEnd(30)} ${"ns/call".padStart(8)} ${"emitter ÷ this".padStart(15)}`);
  for (const [name, v] of Object.entries(pc)) {
    const ratio = v > 0 && name !== "emitter.request" ? `${(pc["emitter.request"] / v).toFixed(2)}x` : "";
    console.log(`${name.padEnd(30)} ${v.toFixed(1).padStart(8)} ${ratio.padStart(15)}`);
  }
  console.log(`hot-path drops during the timed loops: ${result.per_call.hot_path_drops} (must be 0)`);
  console.log(`\nthroughput (${args.events} events, bursts of ${CHUNK}, then flush):`);
  for (const [name, t] of Object.entries(result.throughput)) {
    if (typeof t === "string") console.log(`  ${name}: ${t}`);
    else {
      const extra = t.daemon_received !== undefined ? `, daemon received ${t.daemon_received}` : "";
      console.log(`  ${name.padEnd(14)} ${String(t.events_per_second).padStart(9)} events/s sent ` +
                  `(${t.recorded_per_second} recorded/s; sent ${t.sent}, dropped ${t.dropped}${extra})`); // prettier-ignore
    }
  }
}
