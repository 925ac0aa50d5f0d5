/**
 * `instrumentOpenAI(client, emitter)`: metrics for every chat/completions call of an OpenAI
 * client — the Node counterpart of the Python client's `instrument_openai`, with the same
 * events for the same calls.
 *
 * Works with the official `openai` package (v4 and later) and any client of the same shape
 * (`client.chat.completions.create`, `client.completions.create`); `openai` itself is never
 * imported here. Each `create` is replaced on the instance by a wrapper that returns the SDK's own
 * promise (an `APIPromise`: `.withResponse()` keeps working) and records, on the side:
 *
 * - a plain call: one `request` (latency until the response arrived, HTTP status, input, output,
 *   cached and reasoning tokens from `usage`, finish reason, the response id as `request_id`);
 * - a streamed call: the SDK's `Stream` is returned with its iterator instrumented; each chunk
 *   that carries output is timestamped, and when the stream ends (`completed`), throws (`failed`)
 *   or is left early (`cancelled`), the call is recorded as `stream.start` (at the time of the
 *   call, with the prompt tokens), one `stream.token` per output chunk at its arrival time, and
 *   `stream.end`: the daemon derives time to first token, inter-token latency and token rates.
 *   Token counts come from the final `usage` chunk when the server sends one (pass
 *   `stream_options: {include_usage: true}`, or `includeUsage: true` here to add it and hide that
 *   extra chunk from the caller); without it each output chunk counts as one token and prompt
 *   tokens are unknown (0);
 * - an error: its class as `error_type` and its message; with an HTTP status, a `request` with
 *   that status; without one (connection error, timeout, abort), an `error` event.
 *
 * The client's API key is hashed here (`k_` + 12 hex digits of SHA-256, the daemon's rule): only
 * that `key_id` is sent. `user_id` is the call's `user` parameter. Nothing here can throw into
 * the application or change what the SDK returns.
 */

import { createHash, randomUUID } from "node:crypto";

import { now } from "./clock.js";
import type { Emitter } from "./emitter.js";
import { errorMessage, errorType } from "./stream.js";

export interface InstrumentOpenAIOptions {
  /** The `provider` label (default: not sent; the daemon derives it from the model name). */
  provider?: string;
  /** Ask streamed calls for a final usage chunk, and hide that chunk from the caller. */
  includeUsage?: boolean;
  /** The `endpoint` label per resource; default chat.completions → /v1/chat/completions,
   *  completions → /v1/completions. */
  endpoints?: Record<string, string>;
}

const RESOURCES: Record<string, string> = {
  "chat.completions": "/v1/chat/completions",
  completions: "/v1/completions",
};
const ORIGINAL = Symbol.for("metricsd-client.openai.original");
const MAX_MESSAGE = 512;

type AnyFn = ((...args: unknown[]) => unknown) & { [ORIGINAL]?: AnyFn };
type Obj = Record<string, unknown>;

function get(obj: unknown, key: string): unknown {
  return obj !== null && typeof obj === "object" ? (obj as Obj)[key] : undefined;
}

function int(v: unknown): number {
  const n = typeof v === "number" ? Math.trunc(v) : Number.NaN;
  return Number.isFinite(n) && n > 0 ? n : 0;
}

/** `total` tokens over `chunks` chunks as evenly as whole numbers allow (each ≥ 1). */
export function spread(total: number, chunks: number): number[] {
  if (chunks <= 0) return [];
  if (total < chunks) return Array(chunks).fill(1);
  const out: number[] = [];
  for (let i = 0; i < chunks; i++) {
    out.push(Math.floor(((i + 1) * total) / chunks) - Math.floor((i * total) / chunks));
  }
  return out;
}

/** The daemon's key id for a raw API key. */
export function hashKey(apiKey: string): string {
  return "k_" + createHash("sha256").update(apiKey, "utf8").digest("hex").slice(0, 12);
}

/** One call being measured; recorded exactly once when it ends. */
class Call {
  readonly wall0 = now();
  readonly perf0 = performance.now();
  model: string;
  readonly userId: string | undefined;
  readonly keyId: string | undefined;
  readonly stream: boolean;
  hideUsage = false;
  readonly chunkTimes: number[] = [];
  finishReason: string | undefined;
  usage: unknown;
  requestId: string | undefined;
  done = false;
  tHeaders = 0;
  status: number | undefined;

  constructor(
    readonly emitter: Emitter,
    readonly endpoint: string,
    readonly provider: string | undefined,
    apiKey: unknown,
    body: Obj,
  ) {
    this.keyId = typeof apiKey === "string" && apiKey !== "" ? hashKey(apiKey) : undefined;
    this.model = String(body.model ?? "");
    this.userId = typeof body.user === "string" ? body.user : undefined;
    this.stream = body.stream === true;
  }

  /** Wall time now, and ms since the call started (one clock: intervals stay exact). */
  private clock(): [number, number] {
    const elapsed = performance.now() - this.perf0;
    return [this.wall0 + elapsed / 1000, elapsed];
  }

  learn(obj: unknown): void {
    const model = get(obj, "model");
    if (typeof model === "string" && model !== "") this.model = model;
    const id = get(obj, "id");
    if (typeof id === "string" && id !== "" && this.requestId === undefined) this.requestId = id;
    const usage = get(obj, "usage");
    if (usage !== undefined && usage !== null) this.usage = usage;
    const choices = get(obj, "choices");
    if (Array.isArray(choices)) {
      for (const c of choices) {
        const reason = get(c, "finish_reason");
        if (typeof reason === "string" && reason !== "") this.finishReason = reason;
      }
    }
  }

  private tokens(): { input: number; output: number; cached: number; reasoning: number } {
    const u = this.usage;
    return {
      input: int(get(u, "prompt_tokens")),
      output: int(get(u, "completion_tokens")),
      cached: int(get(get(u, "prompt_tokens_details"), "cached_tokens")),
      reasoning: int(get(get(u, "completion_tokens_details"), "reasoning_tokens")),
    };
  }

  private common(): Obj {
    return {
      endpoint: this.endpoint,
      model: this.model,
      provider: this.provider,
      key_id: this.keyId,
      user_id: this.userId,
      request_id: this.requestId,
    };
  }

  private request(latencyMs: number, status: number, error?: unknown): void {
    const t = this.tokens();
    this.emitter.request(latencyMs, {
      ...this.common(),
      ts: this.wall0 + latencyMs / 1000,
      status,
      input_tokens: t.input,
      output_tokens: t.output,
      cached_tokens: t.cached,
      reasoning_tokens: t.reasoning,
      streaming: this.stream ? true : undefined,
      finish_reason: this.finishReason,
      error_type: error === undefined ? undefined : errorType(error),
      error_message: error === undefined ? undefined : errorMessage(error).slice(0, MAX_MESSAGE) || undefined,
    });
  }

  /** A plain call's parsed response. */
  completed(response: unknown): void {
    if (this.done) return;
    this.done = true;
    try {
      const latency = this.tHeaders > 0 ? this.tHeaders - this.perf0 : this.clock()[1];
      this.learn(response);
      this.request(latency, this.status ?? 200);
    } catch {
      // never break the call
    }
  }

  failed(err: unknown): void {
    if (this.done) return;
    this.done = true;
    try {
      const [, latency] = this.clock();
      const status = get(err, "status");
      if (this.stream && this.chunkTimes.length > 0) {
        this.streamEvents(latency, "failed", err);
      } else if (typeof status === "number" && Number.isInteger(status)) {
        this.request(latency, status, err);
      } else {
        this.emitter.error(errorType(err), {
          ...this.common(),
          provider: this.provider,
          error_message: errorMessage(err).slice(0, MAX_MESSAGE) || undefined,
          ts: this.wall0 + latency / 1000,
        });
      }
    } catch {
      // never break the call
    }
  }

  /** Note one streamed chunk; false when it is the usage chunk this wrapper asked for. */
  chunk(chunk: unknown): boolean {
    try {
      const [wall] = this.clock();
      this.learn(chunk);
      const choices = get(chunk, "choices");
      if (this.hideUsage && (!Array.isArray(choices) || choices.length === 0) && get(chunk, "usage") != null) {
        return false;
      }
      if (Array.isArray(choices)) {
        for (const c of choices) {
          const d = get(c, "delta");
          const toolCalls = get(d, "tool_calls");
          if (
            get(d, "content") ||
            (Array.isArray(toolCalls) && toolCalls.length > 0) ||
            get(d, "refusal") ||
            get(d, "reasoning_content") ||
            get(c, "text")
          ) {
            this.chunkTimes.push(wall);
            break;
          }
        }
      }
    } catch {
      // never break the stream
    }
    return true;
  }

  /** The stream ended (`completed`) or was left early (`cancelled`). */
  ended(status: "completed" | "cancelled"): void {
    if (this.done) return;
    this.done = true;
    try {
      this.streamEvents(this.clock()[1], status);
    } catch {
      // never break the stream
    }
  }

  private streamEvents(latencyMs: number, status: "completed" | "failed" | "cancelled", err?: unknown): void {
    const em = this.emitter;
    const id = `oai-${randomUUID().replaceAll("-", "")}`;
    const times = this.chunkTimes;
    const t = this.tokens();
    const known = get(this.usage, "completion_tokens") != null;
    const counts = known ? spread(t.output, times.length) : times.map(() => 1);
    em.streamStart(id, {
      prompt_tokens: t.input,
      provider: this.provider,
      endpoint: this.endpoint,
      model: this.model,
      key_id: this.keyId,
      user_id: this.userId,
      request_id: this.requestId,
      ts: this.wall0,
    });
    for (let i = 0; i < times.length; i++) em.streamToken(id, { n: counts[i], ts: times[i] });
    em.streamEnd(id, {
      status,
      finish_reason: this.finishReason,
      error_type: status === "failed" && err !== undefined ? errorType(err) : undefined,
      error_message:
        status !== "completed" && err !== undefined ? errorMessage(err).slice(0, MAX_MESSAGE) || undefined : undefined,
      ts: this.wall0 + latencyMs / 1000,
    });
  }
}

function resource(client: unknown, path: string): Obj | undefined {
  let obj: unknown = client;
  for (const part of path.split(".")) {
    obj = get(obj, part);
    if (obj === undefined || obj === null) return undefined;
  }
  return typeof obj === "object" ? (obj as Obj) : undefined;
}

/** Instrument the returned `Stream`'s iterator (once: a second iteration is not a second call). */
function instrumentStream(stream: unknown, call: Call): void {
  const s = stream as Record<symbol, unknown> | null;
  const iterate = s?.[Symbol.asyncIterator];
  if (!s || typeof iterate !== "function") return;
  let used = false;
  s[Symbol.asyncIterator] = function (this: unknown): AsyncIterator<unknown> {
    const source = (iterate as () => AsyncIterator<unknown>).call(s);
    if (used) return source;
    used = true;
    return (async function* () {
      let outcome: "completed" | "cancelled" = "cancelled";
      try {
        for await (const chunk of { [Symbol.asyncIterator]: () => source }) {
          if (call.chunk(chunk)) yield chunk;
        }
        outcome = "completed";
      } catch (err) {
        call.failed(err);
        throw err;
      } finally {
        call.ended(outcome); // no-op after failed()
      }
    })();
  };
}

function wrap(original: AnyFn, client: unknown, emitter: Emitter, endpoint: string, options: InstrumentOpenAIOptions): AnyFn {
  const create = function (this: unknown, ...args: unknown[]): unknown {
    let call: Call | undefined;
    try {
      const body = (get(args, "0") ?? {}) as Obj;
      call = new Call(emitter, endpoint, options.provider, get(client, "apiKey"), body);
      if (options.includeUsage && call.stream && body.stream_options == null) {
        args = [{ ...body, stream_options: { include_usage: true } }, ...args.slice(1)];
        call.hideUsage = true;
      }
    } catch {
      call = undefined;
    }
    let result: unknown;
    try {
      result = original.apply(this, args);
    } catch (err) {
      call?.failed(err);
      throw err;
    }
    if (call !== undefined) {
      try {
        observe(result, call);
      } catch {
        // never break the call
      }
    }
    return result;
  } as AnyFn;
  create[ORIGINAL] = original;
  Object.defineProperty(create, "name", { value: "create" });
  return create;
}

/** Watch an APIPromise without consuming it differently from what the caller does. */
function observe(promise: unknown, call: Call): void {
  const p = promise as { responsePromise?: Promise<unknown>; parse?: () => Promise<unknown> } | null;
  if (!p || typeof p.parse !== "function") {
    // Not an APIPromise (another client): observe it as a plain promise.
    if (p && typeof (p as Promise<unknown>).then === "function") {
      (p as Promise<unknown>).then(
        (v) => (call.stream ? instrumentStream(v, call) : call.completed(v)),
        (err) => call.failed(err),
      );
    }
    return;
  }
  // Errors (HTTP or connection) reject the response promise; observing it reads no body.
  p.responsePromise?.then(
    (r) => {
      call.tHeaders = performance.now();
      const status = get(get(r, "response"), "status");
      if (typeof status === "number") call.status = status;
    },
    (err) => call.failed(err),
  );
  // then / catch / finally / withResponse all go through parse(): observe its result once.
  const parse = p.parse;
  let parsed: Promise<unknown> | undefined;
  p.parse = function (): Promise<unknown> {
    if (parsed === undefined) {
      parsed = parse.call(p);
      parsed.then(
        (value) => (call.stream ? instrumentStream(value, call) : call.completed(value)),
        (err) => call.failed(err),
      );
    }
    return parsed;
  };
}

/** Instrument `client` in place (idempotent) and return it. */
export function instrumentOpenAI<C>(client: C, emitter: Emitter, options: InstrumentOpenAIOptions = {}): C {
  try {
    const labels = { ...RESOURCES, ...(options.endpoints ?? {}) };
    for (const [path, endpoint] of Object.entries(labels)) {
      const res = resource(client, path);
      const original = res?.create as AnyFn | undefined;
      if (res === undefined || typeof original !== "function" || original[ORIGINAL] !== undefined) continue;
      res.create = wrap(original, client, emitter, endpoint, options);
    }
  } catch {
    // an unexpected client shape: leave it as it is
  }
  return client;
}

/** Undo {@link instrumentOpenAI} on `client`. */
export function uninstrumentOpenAI<C>(client: C): C {
  try {
    for (const path of Object.keys(RESOURCES)) {
      const res = resource(client, path);
      const current = res?.create as AnyFn | undefined;
      const original = current?.[ORIGINAL];
      if (res !== undefined && original !== undefined) {
        delete res.create; // the SDK's method lives on the prototype
        if (res.create !== original) res.create = original;
      }
    }
  } catch {
    // ignore
  }
  return client;
}
