/**
 * Instrumentation for the official `openai` SDK (v4 and later): `chat.completions.create`.
 *
 * `instrumentOpenAI(client, emitter)` replaces `client.chat.completions.create` on that client
 * instance with a wrapper that returns the SDK's own promise (an `APIPromise`, so
 * `.withResponse()` keeps working) and records, on the side:
 *
 * - a non-streamed completion: one `request` (duration until the response arrived, HTTP status,
 *   `usage` tokens, `finish_reason`, `request_id`);
 * - a streamed completion (`stream: true`): `stream.start` at the time of the call, a
 *   `stream.token` per chunk that carries output (content, refusal or tool-call arguments),
 *   timed on arrival, and `stream.end` (`completed`, `failed` or `cancelled`, with the finish
 *   reason); the returned `Stream` object is the SDK's, its iterator instrumented;
 * - a call that fails before any output: a `request` with the HTTP status and the error's class
 *   as `error_type`, or, with no HTTP status (connection error, timeout, abort), an `error`.
 *
 * Nothing the wrapper does can throw into the application or change what the SDK returns.
 */

import { now } from "./clock.js";
import { errorMessage, errorType } from "./stream.js";
import type { Emitter } from "./emitter.js";

export interface InstrumentOpenAIOptions {
  /** The `endpoint` label; default "/v1/chat/completions". */
  endpoint?: string;
  /** The `provider` label; default "openai". */
  provider?: string;
  /** Send each streamed chunk's text as stream.token `text` (default false). */
  captureText?: boolean;
  /** Extra fields for every event (e.g. `key_id`, `user_id`). */
  key_id?: string;
  user_id?: string;
}

const INSTRUMENTED = Symbol.for("metricsd-client.openai");

interface ChatChunk {
  choices?: {
    delta?: {
      content?: string | null;
      refusal?: string | null;
      tool_calls?: { function?: { arguments?: string } }[];
    };
    finish_reason?: string | null;
  }[];
}

interface Completion {
  choices?: { finish_reason?: string | null }[];
  usage?: {
    prompt_tokens?: number;
    completion_tokens?: number;
    prompt_tokens_details?: { cached_tokens?: number } | null;
    completion_tokens_details?: { reasoning_tokens?: number } | null;
  } | null;
  _request_id?: string | null;
}

type AnyFn = (...args: unknown[]) => unknown;

function chunkText(chunk: ChatChunk): string {
  let out = "";
  for (const c of chunk?.choices ?? []) {
    const d = c?.delta;
    if (!d) continue;
    if (typeof d.content === "string") out += d.content;
    if (typeof d.refusal === "string") out += d.refusal;
    for (const t of d.tool_calls ?? []) {
      const a = t?.function?.arguments;
      if (typeof a === "string") out += a;
    }
  }
  return out;
}

function chunkFinish(chunk: ChatChunk): string | undefined {
  for (const c of chunk?.choices ?? []) {
    if (typeof c?.finish_reason === "string") return c.finish_reason;
  }
  return undefined;
}

function num(v: unknown): number | undefined {
  return typeof v === "number" && Number.isFinite(v) ? v : undefined;
}

/**
 * Instrument an `OpenAI` client instance in place (idempotent) and return it.
 */
export function instrumentOpenAI<C>(client: C, emitter: Emitter, options: InstrumentOpenAIOptions = {}): C {
  try {
    const completions = (client as { chat?: { completions?: Record<string | symbol, unknown> } })
      ?.chat?.completions;
    if (!completions || typeof completions.create !== "function") return client;
    if (completions[INSTRUMENTED]) return client;
    const original = completions.create as AnyFn;
    const endpoint = options.endpoint ?? "/v1/chat/completions";
    const provider = options.provider ?? "openai";
    const common = {
      endpoint,
      provider,
      key_id: options.key_id,
      user_id: options.user_id,
    };
    const wrapped = function (this: unknown, ...args: unknown[]): unknown {
      const t0 = now();
      const result = original.apply(this, args);
      try {
        observe(result, args[0] as Record<string, unknown> | undefined, t0);
      } catch {
        // never break the call
      }
      return result;
    };
    const observe = (promise: unknown, body: Record<string, unknown> | undefined, t0: number): void => {
      const p = promise as {
        responsePromise?: Promise<{ response?: { status?: number } }>;
        parse?: () => Promise<unknown>;
      } | null;
      if (!p || typeof p.parse !== "function") return;
      const model = typeof body?.model === "string" ? body.model : undefined;
      const streaming = body?.stream === true;
      let tHeaders = 0;
      let status: number | undefined;
      let recorded = false;
      const failed = (err: unknown): void => {
        if (recorded) return;
        recorded = true;
        const httpStatus = num((err as { status?: unknown } | null)?.status);
        const fields = { ...common, model, error_message: errorMessage(err) };
        if (httpStatus !== undefined) {
          emitter.request((now() - t0) * 1000, {
            ...fields,
            ts: now(),
            status: httpStatus,
            error_type: errorType(err),
            streaming,
            input_tokens: null,
            output_tokens: null,
            cached_tokens: null,
            cache_write_tokens: null,
            reasoning_tokens: null,
          });
        } else {
          emitter.error(errorType(err), fields);
        }
      };
      // Errors (HTTP or connection) reject the response promise; observing it reads no body.
      p.responsePromise?.then(
        (r) => {
          tHeaders = now();
          status = num(r?.response?.status);
        },
        failed,
      );
      const parse = p.parse;
      let parsed: Promise<unknown> | undefined;
      // then / catch / finally / withResponse all go through parse(): observe its result once.
      p.parse = function (this: unknown): Promise<unknown> {
        if (parsed === undefined) {
          parsed = parse.call(p);
          parsed.then((value) => {
            if (recorded) return;
            recorded = true;
            try {
              if (streaming) instrumentChatStream(value, emitter, common, model, body, t0, options);
              else recordCompletion(value as Completion, emitter, common, model, t0, tHeaders, status);
            } catch {
              // never break the call
            }
          }, failed);
        }
        return parsed;
      };
    };
    Object.defineProperty(wrapped, "name", { value: "create" });
    completions.create = wrapped;
    completions[INSTRUMENTED] = true;
  } catch {
    // an unexpected client shape: leave it as it is
  }
  return client;
}

function recordCompletion(
  value: Completion,
  emitter: Emitter,
  common: Record<string, unknown>,
  model: string | undefined,
  t0: number,
  tHeaders: number,
  status: number | undefined,
): void {
  const end = tHeaders || now();
  const usage = value?.usage ?? undefined;
  emitter.request((end - t0) * 1000, {
    ...common,
    ts: end,
    model,
    status: status ?? 200,
    streaming: false,
    input_tokens: num(usage?.prompt_tokens) ?? 0,
    output_tokens: num(usage?.completion_tokens) ?? 0,
    cached_tokens: num(usage?.prompt_tokens_details?.cached_tokens) ?? 0,
    reasoning_tokens: num(usage?.completion_tokens_details?.reasoning_tokens) ?? 0,
    finish_reason: value?.choices?.[0]?.finish_reason ?? undefined,
    request_id: typeof value?._request_id === "string" ? value._request_id : undefined,
  });
}

function instrumentChatStream(
  stream: unknown,
  emitter: Emitter,
  common: Record<string, unknown>,
  model: string | undefined,
  body: Record<string, unknown> | undefined,
  t0: number,
  options: InstrumentOpenAIOptions,
): void {
  const s = stream as Record<symbol, unknown> | null;
  const iterate = s?.[Symbol.asyncIterator];
  if (!s || typeof iterate !== "function") return;
  const maxTokens = num(body?.max_completion_tokens) ?? num(body?.max_tokens);
  const captureText = options.captureText === true;
  let used = false;
  s[Symbol.asyncIterator] = function (this: unknown) {
    const source = (iterate as () => AsyncIterator<ChatChunk>).call(s);
    if (used) return source; // a second iteration (e.g. tee()) is not a second stream
    used = true;
    const iterable: AsyncIterable<ChatChunk> = { [Symbol.asyncIterator]: () => source };
    return emitter.stream(iterable, {
      ...common,
      ts: t0,
      model,
      temperature: num(body?.temperature),
      max_tokens: maxTokens,
      tokens: (chunk) => (chunkText(chunk).length > 0 ? 1 : 0),
      text: captureText ? (chunk) => chunkText(chunk) : undefined,
      finishReason: chunkFinish,
    });
  };
}
