/**
 * Options of the emitter's event methods. Property names are SPEC §1.3's field names, exactly
 * as on the wire (and as the Python emitter's keyword arguments). A property left out gets the
 * method's default; `null` means "not sent" (the daemon then applies the spec's default).
 */

/** Fields every event may carry. */
export interface CommonFields {
  /** Unix seconds at the emitter (float); default: now. */
  ts?: number | null;
  endpoint?: string | null;
  model?: string | null;
  /** A raw API key: the daemon hashes it on arrival and keeps only its `key_id`. */
  api_key?: string | null;
  /** An already-hashed key id. */
  key_id?: string | null;
  user_id?: string | null;
  request_id?: string | null;
}

export interface RequestFields extends CommonFields {
  /** HTTP status; default 200. */
  status?: number | null;
  /** Default 0. */
  input_tokens?: number | null;
  /** Default 0. */
  output_tokens?: number | null;
  /** Default 0. */
  cached_tokens?: number | null;
  /** Default 0. */
  cache_write_tokens?: number | null;
  /** Default 0. */
  reasoning_tokens?: number | null;
  streaming?: boolean | null;
  ttft_ms?: number | null;
  queue_ms?: number | null;
  finish_reason?: string | null;
  provider?: string | null;
  error_type?: string | null;
  error_message?: string | null;
  batch?: boolean | null;
  cost_usd?: number | null;
}

export interface ErrorFields extends CommonFields {
  /** Not sent by default: the daemon's default is 500. */
  status?: number | null;
  error_message?: string | null;
  provider?: string | null;
}

export interface StreamStartFields extends CommonFields {
  prompt_tokens?: number | null;
  temperature?: number | null;
  max_tokens?: number | null;
  client_id?: string | null;
  provider?: string | null;
}

export interface StreamTokenFields extends CommonFields {
  /** Tokens in this chunk; default 1. */
  n?: number | null;
  /** Chunk size on the wire. */
  bytes?: number | null;
  /** Token text (at most 256 characters are kept). */
  text?: string | null;
}

export type StreamStatus = "completed" | "failed" | "cancelled";

export interface StreamEndFields extends CommonFields {
  /** Default "completed". */
  status?: StreamStatus | null;
  finish_reason?: string | null;
  error_type?: string | null;
  error_message?: string | null;
}

export interface StreamBackpressureFields extends CommonFields {
  buffer_size?: number | null;
}

export interface CacheFields extends CommonFields {
  total_tokens?: number | null;
  matched_tokens?: number | null;
}

export interface QueueFields extends CommonFields {
  /** Queue name; default "default". */
  queue?: string | null;
  capacity?: number | null;
}

export interface ImagesUsage {
  size?: string;
  quality?: string;
  n?: number;
}

export interface UsageFields extends CommonFields {
  prompt_tokens?: number | null;
  completion_tokens?: number | null;
  cached_tokens?: number | null;
  images?: ImagesUsage | null;
  characters?: number | null;
  batch?: boolean | null;
  cost_usd?: number | null;
}

export type MetricKind = "counter" | "gauge" | "histogram";

export interface MetricFields extends CommonFields {
  /** At most 8 pairs, names like metric names. */
  labels?: Record<string, string> | null;
}

export interface EmitterOptions {
  /** ZeroMQ endpoint; default `$METRICSD_INGEST`, else `tcp://127.0.0.1:5557`. */
  endpoint?: string;
  /** This process's name in `client` drop reports and in every event; default "default". */
  source?: string;
  /** Flush as soon as this many events wait; default 1000. */
  batchSize?: number;
  /** Flush events at most this long after they were recorded; default 50 ms. */
  batchTimeoutMs?: number;
  /** ZeroMQ send high-water mark, in frames; default 1000. */
  sndhwm?: number;
  /** Events held at most between flushes; beyond, events are dropped and counted. Default 100 000. */
  maxBuffer?: number;
}

/** Options of {@link Emitter.stream}: the stream.start fields, and how to read a chunk. */
export interface StreamOptions<T> extends StreamStartFields {
  /** Default: a random id. */
  stream_id?: string;
  /** Start time (Unix seconds) for TTFT, e.g. when the request was sent; default: now. */
  ts?: number | null;
  /** Tokens in a chunk; default 1 per chunk. A chunk with 0 sends no stream.token event. */
  tokens?: (chunk: T) => number;
  /** The chunk's text, sent as stream.token `text` (default: not sent). */
  text?: (chunk: T) => string | null | undefined;
  /** The chunk's size in bytes, sent as stream.token `bytes` (default: not sent). */
  bytes?: (chunk: T) => number | null | undefined;
  /** The finish reason a chunk carries, if any; the last one seen goes into stream.end. */
  finishReason?: (chunk: T) => string | null | undefined;
}
