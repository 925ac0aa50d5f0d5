// Shared test helpers: the conformance vectors (tests/vectors/), a ZeroMQ PULL socket that
// decodes frames, and a real metricsd daemon. Not a test file itself (no tests here).

import { spawn } from "node:child_process";
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

import { decode } from "@msgpack/msgpack";
import { Pull } from "zeromq";

import { Emitter } from "../dist/index.js";

export const PKG = resolve(dirname(fileURLToPath(import.meta.url)), "..");
export const ROOT = resolve(PKG, "..", "..");
export const VECTORS_DIR = join(ROOT, "tests", "vectors");
/** `now` for vectors: an event without ts gets this arrival time. */
export const NOW = 1_700_000_000.0;

// ------------------------------------------------------------------------------ vectors

export function loadVectors() {
  return readdirSync(VECTORS_DIR)
    .filter((f) => f.endsWith(".json") && f !== "defaults.json")
    .sort()
    .map((f) => JSON.parse(readFileSync(join(VECTORS_DIR, f), "utf8")));
}

export const DEFAULTS = JSON.parse(readFileSync(join(VECTORS_DIR, "defaults.json"), "utf8"));

/** The frame: `hex`, or the concatenation of `hex_parts` (each repeated `repeat` times). */
export function frameBytes(vector) {
  if (vector.hex !== undefined) return Buffer.from(vector.hex, "hex");
  return Buffer.concat(
    vector.hex_parts.flatMap((p) => Array(p.repeat ?? 1).fill(Buffer.from(p.hex, "hex"))),
  );
}

/** Tagged JSON → the msgpack value: {"$float": "NaN"|…} and {"$bin": hex}. */
export function untag(v) {
  if (Array.isArray(v)) return v.map(untag);
  if (v !== null && typeof v === "object") {
    const keys = Object.keys(v);
    if (keys.length === 1 && keys[0] === "$float") return Number(v.$float);
    if (keys.length === 1 && keys[0] === "$bin") return new Uint8Array(Buffer.from(v.$bin, "hex"));
    return Object.fromEntries(keys.map((k) => [k, untag(v[k])]));
  }
  return v;
}

export function expectedEvents(vector) {
  return (vector.events ?? []).flatMap((e) => {
    const { $repeat = 1, ...event } = e;
    return Array.from({ length: $repeat }, () => ({ ...event }));
  });
}

/** Rows of a decoded frame by SPEC §1.2's wire rule (no validation, no defaults), v dropped. */
export function expand(obj) {
  const items = Array.isArray(obj) ? obj : [obj];
  const out = [];
  for (const item of items) {
    if ("cols" in item || "const" in item) {
      const cols = item.cols ?? {};
      const lengths = Object.values(cols).map((c) => c.length);
      const n = lengths.length ? Math.max(...lengths) : 1;
      for (let i = 0; i < n; i++) {
        const row = { type: item.type, ...(item.const ?? {}) };
        for (const [f, c] of Object.entries(cols)) row[f] = c[i];
        delete row.v;
        out.push(row);
      }
    } else {
      const { v: _v, ...row } = item;
      out.push(row);
    }
  }
  return out;
}

/** An event with the defaults of defaults.json filled in and ts defaulted to NOW. */
export function normalise(event) {
  const out = { type: event.type, ts: NOW, ...DEFAULTS["*"], ...(DEFAULTS[event.type] ?? {}) };
  for (const [k, v] of Object.entries(event)) if (k !== "v" && v != null) out[k] = v;
  return out;
}

export function canonical(v) {
  if (Array.isArray(v)) return v.map(canonical);
  if (v instanceof Uint8Array) return { $bin: Buffer.from(v).toString("hex") };
  if (v !== null && typeof v === "object") {
    return Object.fromEntries(
      Object.keys(v)
        .sort()
        .map((k) => [k, canonical(v[k])]),
    );
  }
  if (typeof v === "number" && Number.isNaN(v)) return { $float: "NaN" };
  if (v === Infinity || v === -Infinity) return { $float: String(v) };
  return v;
}

/** An order-free form of a list of events (a receiver may reorder them). */
export function sortEvents(events) {
  return events.map((e) => JSON.stringify(canonical(e))).sort();
}

const METHODS = {
  request: (em, { duration_ms, ...o }) => em.request(duration_ms, o),
  error: (em, { error_type, ...o }) => em.error(error_type, o),
  "stream.start": (em, { stream_id, ...o }) => em.streamStart(stream_id, o),
  "stream.token": (em, { stream_id, ...o }) => em.streamToken(stream_id, o),
  "stream.end": (em, { stream_id, ...o }) => em.streamEnd(stream_id, o),
  "stream.backpressure": (em, { stream_id, ...o }) => em.streamBackpressure(stream_id, o),
  cache: (em, { hit, ...o }) => em.cache(hit, o),
  queue: (em, { depth, ...o }) => em.queue(depth, o),
  usage: (em, o) => em.usage(o),
  metric: (em, { name, kind, value, ...o }) => em.metric(name, kind, value, o),
};

/** Record one logical event ({type, …fields}) with the emitter method of its type. */
export function emit(em, event) {
  const { type, ...fields } = event;
  METHODS[type](em, fields);
}

/** The rows an emitter's methods append for these calls (no flush, no socket). */
export async function record(source, calls) {
  const em = new Emitter({ endpoint: "tcp://127.0.0.1:9", source, batchSize: 1e9, batchTimeoutMs: 1e9 });
  for (const call of calls) emit(em, call);
  const rows = em._buf;
  em._buf = [];
  if (em.dropped !== 0) throw new Error("the emitter dropped a call");
  await em.close(100);
  return rows;
}

// ------------------------------------------------------------------------------ ZeroMQ

/** A PULL socket on a random local port that decodes and checks every frame. */
export class PullSink {
  constructor() {
    this.sock = new Pull({ linger: 0, receiveTimeout: 5000 });
    this.frames = [];
  }

  async bind() {
    await this.sock.bind("tcp://127.0.0.1:*");
    this.endpoint = this.sock.lastEndpoint;
    return this;
  }

  /** One frame's rows, or null if nothing arrives within `timeoutMs`. */
  async recvFrame(timeoutMs = 5000) {
    this.sock.receiveTimeout = Math.max(1, Math.round(timeoutMs));
    let msg;
    try {
      msg = await this.sock.receive();
    } catch (err) {
      if (err.code === "EAGAIN") return null;
      throw err;
    }
    if (msg.length !== 1) throw new Error("multipart frames are invalid");
    const data = msg[0];
    if (data.length > 1 << 20) throw new Error("frame over 1 MiB");
    const rows = expand(decode(data));
    if (rows.length > 10_000) throw new Error("frame over 10 000 events");
    this.frames.push({ data, rows });
    return rows;
  }

  /** Receive until `n` application events (not client reports) have arrived. */
  async rows(n, timeoutMs = 5000) {
    const deadline = Date.now() + timeoutMs;
    const out = [];
    while (out.length < n) {
      const left = deadline - Date.now();
      const rows = left > 0 ? await this.recvFrame(left) : null;
      if (rows === null) throw new Error(`got ${out.length} of ${n} events`);
      out.push(...rows.filter((r) => r.type !== "client"));
    }
    if (out.length !== n) throw new Error(`got ${out.length} events, wanted ${n}`);
    return out;
  }

  /** True if no frame arrives within `timeoutMs`. */
  async quiet(timeoutMs = 300) {
    return (await this.recvFrame(timeoutMs)) === null;
  }

  clientReports() {
    return this.frames.flatMap((f) => f.rows.filter((r) => r.type === "client"));
  }

  close() {
    this.sock.close();
  }
}

// ------------------------------------------------------------------------------ daemon

/** The daemon's Python: $METRICSD_PYTHON, else the repository's .venv; null if neither. */
export function findPython() {
  const candidates = [process.env.METRICSD_PYTHON, join(ROOT, ".venv", "bin", "python")];
  return candidates.find((p) => p && existsSync(p)) ?? null;
}

/** Skip a test when the daemon's Python is missing, except in CI (there it must be present). */
export function daemonSkip() {
  if (findPython() !== null) return false;
  if (process.env.CI === "true") throw new Error("no Python for the daemon (set METRICSD_PYTHON)");
  return "no Python with metricsd (set METRICSD_PYTHON or create .venv)";
}

export async function waitFor(fn, timeoutMs = 10_000, intervalMs = 50) {
  const deadline = Date.now() + timeoutMs;
  let last;
  while (Date.now() < deadline) {
    last = await fn();
    if (last) return last;
    await new Promise((r) => setTimeout(r, intervalMs));
  }
  return last;
}

/** Parse the Prometheus text format into {"name{a=\"b\",…}": value} (labels sorted). */
export function parseExposition(text) {
  const out = {};
  for (const line of text.split("\n")) {
    if (line === "" || line.startsWith("#")) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)/.exec(line);
    if (!m) continue;
    const labels = [];
    const re = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g;
    for (let l; (l = re.exec(m[3] ?? "")) !== null; ) labels.push(`${l[1]}="${l[2]}"`);
    labels.sort();
    out[labels.length ? `${m[1]}{${labels.join(",")}}` : m[1]] = Number(m[4]);
  }
  return out;
}

export class Daemon {
  constructor(proc, http, ingest, dir, log) {
    this.proc = proc;
    this.http = http;
    this.ingest = ingest;
    this.dir = dir;
    this.log = log;
  }

  async get(path, timeoutMs = 5000) {
    const res = await fetch(this.http + path, { signal: AbortSignal.timeout(timeoutMs) });
    if (res.status !== 200) throw new Error(`${path}: HTTP ${res.status}`);
    return res;
  }

  async samples() {
    return parseExposition(await (await this.get("/metrics")).text());
  }

  async json(path) {
    return (await this.get(path)).json();
  }

  /** Poll /metrics until `name` (exact sample key) reaches `expected`; return its last value. */
  async waitSample(key, expected, timeoutMs = 10_000) {
    let value = -1;
    await waitFor(async () => {
      value = (await this.samples())[key] ?? 0;
      return value >= expected;
    }, timeoutMs);
    return value;
  }

  async stop(timeoutMs = 10_000) {
    if (this.proc.exitCode === null && this.proc.signalCode === null) {
      const exited = new Promise((r) => this.proc.once("exit", r));
      this.proc.kill("SIGTERM");
      const timer = setTimeout(() => this.proc.kill("SIGKILL"), timeoutMs);
      await exited;
      clearTimeout(timer);
    }
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/** Start `metricsd serve` on free ports (HTTP and ingest), ready within `timeoutMs`. */
export async function startDaemon(timeoutMs = 20_000) {
  const python = findPython();
  const dir = mkdtempSync(join(tmpdir(), "metricsd-node-"));
  const ready = join(dir, "ready.json");
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("METRICSD_")));
  const proc = spawn(
    python,
    ["-m", "metricsd", "serve", "--http", "127.0.0.1:0", "--ingest", "tcp://127.0.0.1:0",
     "--tick", "0.1", "--ready-file", ready],
    { cwd: dir, env, stdio: ["ignore", "pipe", "pipe"] },
  ); // prettier-ignore
  let log = "";
  proc.stdout.on("data", (d) => (log += d));
  proc.stderr.on("data", (d) => (log += d));
  const info = await waitFor(() => {
    if (proc.exitCode !== null) return "exited";
    if (!existsSync(ready)) return null;
    try {
      return JSON.parse(readFileSync(ready, "utf8"));
    } catch {
      return null; // being written
    }
  }, timeoutMs);
  if (!info || info === "exited") {
    proc.kill("SIGKILL");
    rmSync(dir, { recursive: true, force: true });
    throw new Error(`daemon did not become ready:\n${log}`);
  }
  const daemon = new Daemon(proc, info.http, info.ingest, dir, () => log);
  return daemon;
}

/** Run a command; resolve with {code, stdout, stderr}; kill it after `timeoutMs`. */
export function run(cmd, args, { input, env, timeoutMs = 20_000, cwd } = {}) {
  return new Promise((resolvePromise, reject) => {
    const proc = spawn(cmd, args, { env: env ?? process.env, cwd, stdio: ["pipe", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    proc.stdout.on("data", (d) => (stdout += d));
    proc.stderr.on("data", (d) => (stderr += d));
    const timer = setTimeout(() => {
      proc.kill("SIGKILL");
      reject(new Error(`${cmd} timed out after ${timeoutMs} ms:\n${stdout}\n${stderr}`));
    }, timeoutMs);
    proc.on("error", (err) => {
      clearTimeout(timer);
      reject(err);
    });
    proc.on("exit", (code) => {
      clearTimeout(timer);
      resolvePromise({ code, stdout, stderr });
    });
    proc.stdin.end(input ?? "");
  });
}
