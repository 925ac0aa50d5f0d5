/**
 * `Emitter.stream()`: time a stream of chunks (SPEC §4.2's TTFT and token gaps come from these
 * timestamps: first token − start, and the gaps between successive token events).
 */

import { randomUUID } from "node:crypto";

import { now } from "./clock.js";
import type { StreamEndFields, StreamOptions, StreamStartFields } from "./types.js";

/** The emitter methods the helper calls (kept structural to avoid an import cycle). */
export interface StreamSink {
  streamStart(stream_id: string, o?: StreamStartFields): void;
  streamToken(stream_id: string, o?: { ts?: number; n?: number; bytes?: number | null; text?: string | null }): void;
  streamEnd(stream_id: string, o?: StreamEndFields): void;
}

const START_FIELDS = [
  "endpoint",
  "model",
  "api_key",
  "key_id",
  "user_id",
  "request_id",
  "prompt_tokens",
  "temperature",
  "max_tokens",
  "client_id",
  "provider",
] as const;

/** A short, low-cardinality name for an error: its class name (or code), never its message. */
export function errorType(err: unknown): string {
  if (err !== null && typeof err === "object") {
    const name = (err as { constructor?: { name?: unknown } }).constructor?.name;
    if (typeof name === "string" && name !== "" && name !== "Object") return name;
    const code = (err as { code?: unknown }).code;
    if (typeof code === "string" && code !== "") return code;
  }
  return typeof err === "string" ? "Error" : typeof err;
}

export function errorMessage(err: unknown): string {
  try {
    const message = (err as { message?: unknown } | null)?.message;
    return typeof message === "string" ? message : String(err);
  } catch {
    return "";
  }
}

function call<T, R>(fn: ((chunk: T) => R) | undefined, chunk: T, fallback: R): R {
  if (fn === undefined) return fallback;
  try {
    return fn(chunk);
  } catch {
    return fallback;
  }
}

/**
 * Yields the chunks of `chunks` unchanged and records the stream's lifecycle on `sink`.
 *
 * stream.start is recorded when iteration begins, with `options.ts` (default: the time of this
 * call) as the start; each chunk that carries tokens (`options.tokens`, default 1 per chunk) is a
 * stream.token timed when the chunk arrived, before the consumer sees it; stream.end is
 * `completed` when the source ends, `failed` (with the error's class and message) when it throws
 * (the error is re-thrown), `cancelled` when the consumer stops early (the source is closed).
 */
export async function* instrumentStream<T>(
  sink: StreamSink,
  chunks: AsyncIterable<T> | Iterable<T>,
  options: StreamOptions<T>,
): AsyncGenerator<T, void, undefined> {
  const start = options.ts ?? now();
  const id = options.stream_id ?? randomUUID();
  const startFields: StreamStartFields = { ts: start };
  for (const k of START_FIELDS) {
    const v = options[k];
    if (v !== undefined) (startFields as Record<string, unknown>)[k] = v;
  }
  const { tokens, text, bytes, finishReason } = options;
  let end: StreamEndFields = { status: "cancelled" };
  let finish: string | null | undefined;
  try {
    sink.streamStart(id, startFields);
  } catch {
    // the emitter never throws; a custom sink might
  }
  try {
    for await (const chunk of chunks) {
      const ts = now();
      try {
        const n = call(tokens, chunk, 1);
        if (typeof n === "number" && n > 0) {
          sink.streamToken(id, {
            ts,
            n,
            text: call(text, chunk, undefined),
            bytes: call(bytes, chunk, undefined),
          });
        }
        finish = call(finishReason, chunk, undefined) ?? finish;
      } catch {
        // measuring must never break the stream
      }
      yield chunk;
    }
    end = { status: "completed" };
  } catch (err) {
    end = { status: "failed", error_type: errorType(err), error_message: errorMessage(err) };
    throw err;
  } finally {
    try {
      sink.streamEnd(id, { ...end, finish_reason: finish, ts: now() });
    } catch {
      // never throw into the application
    }
  }
}
