/**
 * The {@link Emitter}: a cheap hot path in front of a flusher on the event loop.
 *
 * Every event method appends one array `[typeCode, ts, field, …]` to a buffer and returns; it
 * packs nothing and touches no socket. The first event after a flush arms a timer
 * (`batchTimeoutMs`, unref'd: it never keeps the process alive); the event that brings the buffer
 * to `batchSize` schedules a flush on the next turn of the event loop. A flush swaps the buffer
 * out, packs it into columnar msgpack frames (./wire.ts) and hands them to a ZeroMQ PUSH socket
 * with a send timeout of 0: a frame that would block (high-water mark reached) is dropped and
 * its events counted. Drops not yet reported ride along with the next frame that goes through,
 * as a `client` event. Nothing here throws into the application: every method catches its own
 * errors, and counts the event as dropped.
 */

import { randomUUID } from "node:crypto";

import { now, resync } from "./clock.js";
import { Writer } from "./msgpack.js";
import { instrumentStream } from "./stream.js";
import type {
  CacheFields,
  CommonFields,
  EmitterOptions,
  ErrorFields,
  MetricFields,
  MetricKind,
  QueueFields,
  RequestFields,
  StreamBackpressureFields,
  StreamEndFields,
  StreamOptions,
  StreamStartFields,
  StreamTokenFields,
  UsageFields,
} from "./types.js";
import { assemble, clientEvent, encode, frame, type Row } from "./wire.js";

export const DEFAULT_ENDPOINT = "tcp://127.0.0.1:5557";
/** At close (and at exit), how long ZeroMQ may keep trying to deliver what was handed to it. */
const MAX_CLOSE_LINGER_MS = 500;
/** After a socket cannot be created or connected (a bad endpoint), wait this long to retry. */
const RETRY_MS = 1000;
/** On process.exit(), how long to let frames handed to ZeroMQ in the last second leave. */
const EXIT_WAIT_MS = 100;

const NONE: Readonly<Record<string, undefined>> = Object.freeze({});

/** The minimal surface of a zeromq v6 Push socket used here. */
interface PushSocket {
  connect(endpoint: string): void;
  send(msg: Buffer): Promise<void>;
  close(): void;
  linger: number;
  readonly closed: boolean;
}
type PushClass = new (options: Record<string, unknown>) => PushSocket;

let pushClass: Promise<PushClass> | null = null;
/** zeromq is loaded on first use, so a missing native module cannot break the import. */
function loadPush(): Promise<PushClass> {
  if (pushClass === null) {
    pushClass = import("zeromq").then(
      (m) => (m.Push ?? (m as { default?: { Push?: unknown } }).default?.Push) as unknown as PushClass,
    );
    pushClass.catch(() => {
      pushClass = null;
    });
  }
  return pushClass;
}

/** Every emitter not yet closed, for the exit hooks (weak: an emitter may be collected). */
const live = new Set<WeakRef<Emitter>>();
const collected = new FinalizationRegistry<WeakRef<Emitter>>((ref) => live.delete(ref));
let hooked = false;

function* liveEmitters(): Generator<Emitter> {
  for (const ref of [...live]) {
    const em = ref.deref();
    if (em === undefined) live.delete(ref);
    else yield em;
  }
}

function installHooks(): void {
  if (hooked) return;
  hooked = true;
  process.on("beforeExit", () => {
    for (const em of liveEmitters()) em._beforeExit();
  });
  process.on("exit", () => {
    let recent = false;
    for (const em of liveEmitters()) recent = em._exitSync() || recent;
    // ZeroMQ delivers from its own thread, and process.exit() does not wait for it: give
    // frames handed over just now a moment to leave (bounded, like the Python emitter's linger).
    if (recent) {
      try {
        Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, EXIT_WAIT_MS);
      } catch {
        // never throw into the application
      }
    }
  });
}

function warn(message: string): void {
  try {
    process.emitWarning(message, "MetricsdWarning");
  } catch {
    // never throw into the application
  }
}

function delay<T>(ms: number, value: T): { promise: Promise<T>; cancel: () => void } {
  let timer: NodeJS.Timeout | undefined;
  const promise = new Promise<T>((resolve) => {
    timer = setTimeout(resolve, Math.max(0, ms), value);
    timer.unref();
  });
  return { promise, cancel: () => clearTimeout(timer) };
}

/**
 * Sends metricsd events (SPEC §1.3) to a daemon without ever blocking or throwing.
 *
 * Methods mirror the Python emitter's (`stream_start` → `streamStart`, …); their options are the
 * spec's field names. Create one emitter per process (per daemon endpoint) and share it.
 */
export class Emitter {
  readonly endpoint: string;
  readonly source: string;
  private readonly _batchSize: number;
  private readonly _timeoutMs: number;
  private readonly _sndhwm: number;
  private _maxBuffer: number;
  private _wakeAt: number;
  private _buf: Row[] = [];
  private _closed = false;
  // Counters: _nbufdrop is written by the event methods, the others by the flusher.
  private _nbufdrop = 0;
  private _fdropped = 0;
  private _sent = 0;
  private _reported = 0;
  // Flusher state.
  private _timer: NodeJS.Timeout | null = null;
  private _immediate: NodeJS.Immediate | null = null;
  private _loop: Promise<void> | null = null;
  private _again = false;
  private _flushGen = 0;
  private _doneGen = 0;
  private _waiters: { gen: number; resolve: () => void }[] = [];
  private _sock: PushSocket | null = null;
  private _retryAt = 0;
  private _warned = false;
  private _exitTried = false;
  private _lastHandoff = 0;
  private _socketClosed = false;
  private readonly _writer = new Writer();
  private readonly _ref: WeakRef<Emitter> = new WeakRef(this);
  private readonly _onTimer = (): void => {
    this._timer = null;
    this._schedule();
  };
  private readonly _onKick = (): void => {
    this._immediate = null;
    this._schedule();
  };

  constructor(options: EmitterOptions = {}) {
    const o = options ?? {};
    this.endpoint = o.endpoint || process.env.METRICSD_INGEST || DEFAULT_ENDPOINT;
    this.source = o.source ?? "default";
    this._batchSize = Math.max(1, Math.floor(o.batchSize ?? 1000));
    this._timeoutMs = Math.max(1, o.batchTimeoutMs ?? 50);
    this._sndhwm = Math.max(0, Math.floor(o.sndhwm ?? 1000));
    this._maxBuffer = Math.max(0, Math.floor(o.maxBuffer ?? 100_000));
    this._wakeAt = this._batchSize - 1;
    live.add(this._ref);
    collected.register(this, this._ref, this._ref);
    installHooks();
  }

  // ------------------------------------------------------------------ accounting

  /** Events dropped so far (buffer full, send refused, unencodable, after close). */
  get dropped(): number {
    return this._nbufdrop + this._fdropped;
  }

  /** Events handed to ZeroMQ so far (drop reports not included). */
  get sent(): number {
    return this._sent;
  }

  /** Events waiting in the buffer for the flusher. */
  get buffered(): number {
    return this._buf.length;
  }

  get closed(): boolean {
    return this._closed;
  }

  // ------------------------------------------------------------------ event methods (hot path)
  //
  // Each method: one bound check, one clock read when ts is not given, one array appended, one
  // comparison. The array layout is wire.SPECS[code]: [code, ts, own fields…, endpoint, model,
  // api_key, key_id, user_id, request_id]. Any exception (there should be none) is a drop.

  /** A completed request (SPEC `request`): latency, tokens, outcome. */
  request(duration_ms: number, o?: RequestFields): void {
    try {
      const buf = this._buf;
      const n = buf.length;
      if (n >= this._maxBuffer) {
        this._nbufdrop++;
        return;
      }
      if (o == null) o = NONE;
      buf.push([
        0, o.ts ?? now(), duration_ms,
        o.status === undefined ? 200 : o.status,
        o.input_tokens === undefined ? 0 : o.input_tokens,
        o.output_tokens === undefined ? 0 : o.output_tokens,
        o.cached_tokens === undefined ? 0 : o.cached_tokens,
        o.cache_write_tokens === undefined ? 0 : o.cache_write_tokens,
        o.reasoning_tokens === undefined ? 0 : o.reasoning_tokens,
        o.streaming, o.ttft_ms, o.queue_ms, o.finish_reason, o.provider, o.error_type,
        o.error_message, o.batch, o.cost_usd,
        o.endpoint, o.model, o.api_key, o.key_id, o.user_id, o.request_id,
      ]); // prettier-ignore
      if (n === 0 || n === this._wakeAt) this._wake(n);
    } catch {
      this._nbufdrop++;
    }
  }

  /** A failed request with no latency (SPEC `error`); the daemon's default status: 500. */
  error(error_type: string, o?: ErrorFields): void {
    try {
      const buf = this._buf;
      const n = buf.length;
      if (n >= this._maxBuffer) {
        this._nbufdrop++;
        return;
      }
      if (o == null) o = NONE;
      buf.push([
        1, o.ts ?? now(), error_type, o.status, o.error_message, o.provider,
        o.endpoint, o.model, o.api_key, o.key_id, o.user_id, o.request_id,
      ]); // prettier-ignore
      if (n === 0 || n === this._wakeAt) this._wake(n);
    } catch {
      this._nbufdrop++;
    }
  }

  /** A stream began (SPEC `stream.start`). */
  streamStart(stream_id: string, o?: StreamStartFields): void {
    try {
      const buf = this._buf;
      const n = buf.length;
      if (n >= this._maxBuffer) {
        this._nbufdrop++;
        return;
      }
      if (o == null) o = NONE;
      buf.push([
        2, o.ts ?? now(), stream_id, o.prompt_tokens, o.temperature, o.max_tokens, o.client_id,
        o.provider, o.endpoint, o.model, o.api_key, o.key_id, o.user_id, o.request_id,
      ]); // prettier-ignore
      if (n === 0 || n === this._wakeAt) this._wake(n);
    } catch {
      this._nbufdrop++;
    }
  }

  /** A chunk of `n` tokens arrived on a stream (SPEC `stream.token`). */
  streamToken(stream_id: string, o?: StreamTokenFields): void {
    try {
      const buf = this._buf;
      const k = buf.length;
      if (k >= this._maxBuffer) {
        this._nbufdrop++;
        return;
      }
      if (o == null) o = NONE;
      buf.push([
        3, o.ts ?? now(), stream_id, o.n === undefined ? 1 : o.n, o.bytes, o.text,
        o.endpoint, o.model, o.api_key, o.key_id, o.user_id, o.request_id,
      ]); // prettier-ignore
      if (k === 0 || k === this._wakeAt) this._wake(k);
    } catch {
      this._nbufdrop++;
    }
  }

  /** A stream ended: completed, failed or cancelled (SPEC `stream.end`). */
  streamEnd(stream_id: string, o?: StreamEndFields): void {
    try {
      const buf = this._buf;
      const n = buf.length;
      if (n >= this._maxBuffer) {
        this._nbufdrop++;
        return;
      }
      if (o == null) o = NONE;
      buf.push([
        4, o.ts ?? now(), stream_id, o.status === undefined ? "completed" : o.status,
        o.finish_reason, o.error_type, o.error_message,
        o.endpoint, o.model, o.api_key, o.key_id, o.user_id, o.request_id,
      ]); // prettier-ignore
      if (n === 0 || n === this._wakeAt) this._wake(n);
    } catch {
      this._nbufdrop++;
    }
  }

  /** The consumer of a stream fell behind (SPEC `stream.backpressure`). */
  streamBackpressure(stream_id: string, o?: StreamBackpressureFields): void {
    try {
      const buf = this._buf;
      const n = buf.length;
      if (n >= this._maxBuffer) {
        this._nbufdrop++;
        return;
      }
      if (o == null) o = NONE;
      buf.push([
        5, o.ts ?? now(), stream_id, o.buffer_size,
        o.endpoint, o.model, o.api_key, o.key_id, o.user_id, o.request_id,
      ]); // prettier-ignore
      if (n === 0 || n === this._wakeAt) this._wake(n);
    } catch {
      this._nbufdrop++;
    }
  }

  /** A prompt-cache lookup (SPEC `cache`). */
  cache(hit: boolean, o?: CacheFields): void {
    try {
      const buf = this._buf;
      const n = buf.length;
      if (n >= this._maxBuffer) {
        this._nbufdrop++;
        return;
      }
      if (o == null) o = NONE;
      buf.push([
        6, o.ts ?? now(), hit, o.total_tokens, o.matched_tokens,
        o.endpoint, o.model, o.api_key, o.key_id, o.user_id, o.request_id,
      ]); // prettier-ignore
      if (n === 0 || n === this._wakeAt) this._wake(n);
    } catch {
      this._nbufdrop++;
    }
  }

  /** The current depth of a named queue (SPEC `queue`). */
  queue(depth: number, o?: QueueFields): void {
    try {
      const buf = this._buf;
      const n = buf.length;
      if (n >= this._maxBuffer) {
        this._nbufdrop++;
        return;
      }
      if (o == null) o = NONE;
      buf.push([
        7, o.ts ?? now(), depth, o.queue === undefined ? "default" : o.queue, o.capacity,
        o.endpoint, o.model, o.api_key, o.key_id, o.user_id, o.request_id,
      ]); // prettier-ignore
      if (n === 0 || n === this._wakeAt) this._wake(n);
    } catch {
      this._nbufdrop++;
    }
  }

  /** Billable usage that is not a tracked request (SPEC `usage`): cost only. */
  usage(o?: UsageFields): void {
    try {
      const buf = this._buf;
      const n = buf.length;
      if (n >= this._maxBuffer) {
        this._nbufdrop++;
        return;
      }
      if (o == null) o = NONE;
      buf.push([
        8, o.ts ?? now(), o.prompt_tokens, o.completion_tokens, o.cached_tokens, o.images,
        o.characters, o.batch, o.cost_usd,
        o.endpoint, o.model, o.api_key, o.key_id, o.user_id, o.request_id,
      ]); // prettier-ignore
      if (n === 0 || n === this._wakeAt) this._wake(n);
    } catch {
      this._nbufdrop++;
    }
  }

  /** A custom metric sample: `kind` is counter, gauge or histogram. */
  metric(name: string, kind: MetricKind, value: number, o?: MetricFields): void {
    try {
      const buf = this._buf;
      const n = buf.length;
      if (n >= this._maxBuffer) {
        this._nbufdrop++;
        return;
      }
      if (o == null) o = NONE;
      buf.push([
        9, o.ts ?? now(), name, kind, value, o.labels,
        o.endpoint, o.model, o.api_key, o.key_id, o.user_id, o.request_id,
      ]); // prettier-ignore
      if (n === 0 || n === this._wakeAt) this._wake(n);
    } catch {
      this._nbufdrop++;
    }
  }

  /**
   * Wraps an async (or sync) iterable of chunks: yields the same chunks, and records
   * stream.start (at `ts`, default now), one stream.token per chunk with tokens, timed when the
   * chunk arrived, and stream.end: completed, failed (the iterable threw) or cancelled (the
   * consumer stopped early).
   */
  stream<T>(
    chunks: AsyncIterable<T> | Iterable<T>,
    options?: StreamOptions<T>,
  ): AsyncGenerator<T, void, undefined> {
    return instrumentStream(this, chunks, options ?? {});
  }

  // ------------------------------------------------------------------ lifecycle

  /**
   * Resolves when every event recorded before this call has been handed to ZeroMQ (or dropped):
   * true, or false if that did not happen within `timeoutMs`. Never rejects.
   */
  async flush(timeoutMs = 5000): Promise<boolean> {
    try {
      if (this._closed) return true;
      return await this._flush(timeoutMs);
    } catch {
      return false;
    }
  }

  /**
   * Flushes, then closes the socket, letting queued frames leave for at most 0.5 s.
   * Idempotent; never rejects. Events recorded after close are counted as dropped.
   */
  async close(timeoutMs = 5000): Promise<boolean> {
    try {
      if (this._closed) return true;
      this._closed = true;
      this._maxBuffer = 0;
      live.delete(this._ref);
      collected.unregister(this._ref);
      const deadline = Date.now() + Math.max(0, timeoutMs);
      const ok = await this._flush(timeoutMs);
      this._closeSocket(Math.min(MAX_CLOSE_LINGER_MS, Math.max(0, deadline - Date.now())));
      return ok;
    } catch {
      return false;
    }
  }

  toString(): string {
    return (
      `Emitter(${JSON.stringify(this.endpoint)}, source=${JSON.stringify(this.source)}, ` +
      `sent=${this.sent}, dropped=${this.dropped}, buffered=${this.buffered})`
    );
  }

  private async _flush(timeoutMs: number): Promise<boolean> {
    const gen = ++this._flushGen;
    const done = new Promise<boolean>((resolve) => {
      this._waiters.push({ gen, resolve: () => resolve(true) });
    });
    this._schedule();
    const timeout = delay(timeoutMs, false);
    try {
      return await Promise.race([done, timeout.promise]);
    } finally {
      timeout.cancel();
    }
  }

  /** Called by the hot path when the buffer was empty (n = 0) or reaches batchSize. */
  private _wake(n: number): void {
    if (n >= this._wakeAt) {
      if (this._immediate === null) {
        this._immediate = setImmediate(this._onKick);
        this._immediate.unref();
      }
    } else if (this._timer === null) {
      this._timer = setTimeout(this._onTimer, this._timeoutMs);
      this._timer.unref();
    }
  }

  private _clearTimers(): void {
    if (this._timer !== null) {
      clearTimeout(this._timer);
      this._timer = null;
    }
    if (this._immediate !== null) {
      clearImmediate(this._immediate);
      this._immediate = null;
    }
  }

  private _schedule(): void {
    this._again = true;
    if (this._loop === null) this._loop = this._run();
  }

  private async _run(): Promise<void> {
    try {
      while (this._again) {
        this._again = false;
        this._clearTimers();
        const gen = this._flushGen;
        try {
          await this._cycle();
        } catch (err) {
          warn(`metricsd-client: flush cycle failed: ${String(err)}`);
        }
        this._doneGen = gen;
        const waiting = this._waiters;
        this._waiters = [];
        for (const w of waiting) {
          if (w.gen <= gen) w.resolve();
          else this._waiters.push(w);
        }
      }
    } finally {
      this._loop = null;
    }
  }

  /** One flush: encode everything buffered, send it, account for it. */
  private async _cycle(): Promise<void> {
    const rows = this._buf;
    this._buf = [];
    if (rows.length === 0 && this.dropped === this._reported) return;
    resync();
    let sock = await this._socket();
    if (sock === null) {
      this._fdropped += rows.length;
      return;
    }
    const w = this._writer;
    const { packed, dropped } = encode(rows, this.source, w);
    this._fdropped += dropped;
    let frames = assemble(packed);
    if (frames.length === 0) frames = [[0, []]]; // nothing to send but a drop report
    for (let i = 0; i < frames.length; i++) {
      const [n, parts] = frames[i];
      const pending = this.dropped - this._reported;
      if (n === 0 && pending <= 0) continue;
      const client = pending > 0 ? clientEvent(pending, this.source, w) : null;
      const data = frame(parts, client, w);
      try {
        await sock.send(data);
      } catch (err) {
        this._fdropped += n;
        if ((err as { code?: string } | null)?.code === "EAGAIN") continue; // high-water mark
        this._resetSocket();
        const fresh = await this._socket();
        if (fresh === null) {
          for (const [m] of frames.slice(i + 1)) this._fdropped += m;
          return;
        }
        sock = fresh;
        continue;
      }
      this._sent += n;
      this._lastHandoff = Date.now();
      if (pending > 0) {
        this._reported += pending;
        this._exitTried = false;
      }
    }
  }

  /** The PUSH socket, connected on first use; null if impossible (retried once per second). */
  private async _socket(): Promise<PushSocket | null> {
    if (this._sock !== null) return this._sock;
    if (this._socketClosed) return null; // closed: a late cycle must not open a new one
    const t = Date.now();
    if (t < this._retryAt) return null;
    let sock: PushSocket | null = null;
    try {
      const Push = await loadPush();
      if (this._sock !== null) return this._sock;
      if (this._socketClosed) return null;
      sock = new Push({
        sendHighWaterMark: this._sndhwm,
        sendTimeout: 0,
        linger: MAX_CLOSE_LINGER_MS,
      });
      sock.connect(this.endpoint);
    } catch (err) {
      this._retryAt = t + RETRY_MS;
      if (sock !== null) {
        try {
          sock.linger = 0;
          sock.close();
        } catch {
          // ignore
        }
      }
      if (!this._warned) {
        this._warned = true;
        warn(
          `metricsd-client: cannot connect to ${JSON.stringify(this.endpoint)} (${String(err)}); ` +
            "events are dropped and counted",
        );
      }
      return null;
    }
    this._sock = sock;
    return sock;
  }

  /** Discard a socket that failed (not for EAGAIN); the next send makes a new one. */
  private _resetSocket(): void {
    const sock = this._sock;
    this._sock = null;
    if (sock !== null) {
      try {
        sock.linger = 0;
        sock.close();
      } catch {
        // ignore
      }
    }
  }

  private _closeSocket(lingerMs: number): void {
    const sock = this._sock;
    this._sock = null;
    this._socketClosed = true;
    this._clearTimers();
    if (sock !== null) {
      try {
        sock.linger = Math.round(lingerMs);
        sock.close();
      } catch {
        // ignore
      }
    }
  }

  /** @internal The event loop is empty: send what is left (the flush's work keeps it alive). */
  _beforeExit(): void {
    try {
      if (this._buf.length > 0) {
        void this.flush();
      } else if (this.dropped > this._reported && !this._exitTried) {
        this._exitTried = true; // once, so a daemon that is gone cannot keep the process alive
        void this.flush();
      }
    } catch {
      // never throw into the application
    }
  }

  /**
   * @internal process.exit(): hand what is buffered to the socket synchronously (best effort). Returns
   * true if frames were handed to ZeroMQ within the last second (they may still be queued).
   */
  _exitSync(): boolean {
    try {
      const sock = this._sock;
      const rows = this._buf;
      if (sock === null || rows.length === 0) return Date.now() - this._lastHandoff < 1000;
      this._buf = [];
      const w = this._writer;
      const { packed, dropped } = encode(rows, this.source, w);
      this._fdropped += dropped;
      for (const [n, parts] of assemble(packed)) {
        const pending = this.dropped - this._reported;
        const client = pending > 0 ? clientEvent(pending, this.source, w) : null;
        sock.send(frame(parts, client, w)).catch(() => undefined);
        this._sent += n;
        if (pending > 0) this._reported += pending;
      }
      return true;
    } catch {
      return false; // never throw into the application
    }
  }
}

/** A random stream id. */
export function newStreamId(): string {
  return randomUUID();
}

export type { CommonFields };
