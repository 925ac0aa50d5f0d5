/**
 * Rows → msgpack frames: the flusher's half of the emitter (SPEC §1.2, §1.4).
 *
 * The same algorithm as the Python emitter's `metricsd_client._wire`, so that both emitters
 * send the same bytes for the same calls (checked against tests/vectors/):
 *
 * 1. rows are split by type (in order of first appearance), then grouped by their *label* fields
 *    (endpoint, model, status, …);
 * 2. inside a group, a field that is absent (`null`/`undefined`) in every row is omitted, and a
 *    field that is absent in some rows only splits the group, so no nil reaches the wire;
 * 3. labels, and any other field with the same value in every row, go to `const`; the rest go to
 *    `cols`. `ts` always stays a column, so N is always known;
 * 4. each batch is packed on its own; one that cannot be packed or is too large is split in
 *    halves until the bad or oversized row is isolated and dropped (counted), and frames are
 *    assembled from packed batches under the size and event caps.
 *
 * A row is the array an emitter method appends: `[typeCode, ts, field, field, …]` in the fixed
 * per-type order of {@link SPECS}.
 */

import { Writer } from "./msgpack.js";

export type Row = unknown[];

export const PROTOCOL_VERSION = 1;
/** SPEC §1.4 default limits. */
export const MAX_FRAME_BYTES = 1 << 20;
export const MAX_FRAME_EVENTS = 10_000;
/** One slot and some bytes of every frame are kept free for the `client` drop report. */
export const MAX_BATCH_ROWS = MAX_FRAME_EVENTS - 1;
const RESERVED_BYTES = 128;
export const MAX_PAYLOAD_BYTES = MAX_FRAME_BYTES - RESERVED_BYTES;

// Type codes: the first element of every row. The emitter's methods hard-code these numbers.
export const REQUEST = 0;
export const ERROR = 1;
export const STREAM_START = 2;
export const STREAM_TOKEN = 3;
export const STREAM_END = 4;
export const STREAM_BACKPRESSURE = 5;
export const CACHE = 6;
export const QUEUE = 7;
export const USAGE = 8;
export const METRIC = 9;

/** Fields every event may carry, last in every row, in this order (`ts` is `row[1]`). */
export const COMMON = ["endpoint", "model", "api_key", "key_id", "user_id", "request_id"] as const;
/** The common fields that are labels (request_id and user_id are per-request: columns). */
const COMMON_LABELS = ["endpoint", "model", "api_key", "key_id"];
/** SPEC §1.3's float fields: their numbers are packed as float64 whatever their value. */
const FLOAT_FIELDS = new Set([
  "ts",
  "duration_ms",
  "ttft_ms",
  "queue_ms",
  "cost_usd",
  "temperature",
  "value",
]);

export interface EventSpec {
  readonly code: number;
  readonly type: string;
  /** `fields[i]` is the wire name of `row[i + 1]`. */
  readonly fields: readonly string[];
  /** Row indices of the label fields (grouped on, sent in `const`). */
  readonly labelIdx: readonly number[];
  /** Row indices of the other fields, `ts` (1) first. */
  readonly valueIdx: readonly number[];
  /** `isFloat[i]`: row index i holds a float field. */
  readonly isFloat: readonly boolean[];
}

function spec(code: number, type: string, own: string[], labels: string[]): EventSpec {
  const fields = ["ts", ...own, ...COMMON];
  const allLabels = [...labels, ...COMMON_LABELS];
  return {
    code,
    type,
    fields,
    labelIdx: allLabels.map((name) => fields.indexOf(name) + 1),
    valueIdx: fields.flatMap((name, i) => (allLabels.includes(name) ? [] : [i + 1])),
    isFloat: [false, ...fields.map((name) => FLOAT_FIELDS.has(name))],
  };
}

/** Row layouts by type code. The emitter methods build their arrays in exactly this order. */
export const SPECS: readonly EventSpec[] = [
  spec(
    REQUEST,
    "request",
    [
      "duration_ms",
      "status",
      "input_tokens",
      "output_tokens",
      "cached_tokens",
      "cache_write_tokens",
      "reasoning_tokens",
      "streaming",
      "ttft_ms",
      "queue_ms",
      "finish_reason",
      "provider",
      "error_type",
      "error_message",
      "batch",
      "cost_usd",
    ],
    ["status", "streaming", "finish_reason", "provider", "error_type", "batch"],
  ),
  spec(
    ERROR,
    "error",
    ["error_type", "status", "error_message", "provider"],
    ["error_type", "status", "provider"],
  ),
  spec(
    STREAM_START,
    "stream.start",
    ["stream_id", "prompt_tokens", "temperature", "max_tokens", "client_id", "provider"],
    ["client_id", "provider"],
  ),
  // Token, backpressure: many events per stream, so the stream id is a label (one batch per
  // stream, stream_id in const). Start and end: one event per stream, so it is a column.
  spec(STREAM_TOKEN, "stream.token", ["stream_id", "n", "bytes", "text"], ["stream_id"]),
  spec(
    STREAM_END,
    "stream.end",
    ["stream_id", "status", "finish_reason", "error_type", "error_message"],
    ["status", "finish_reason", "error_type"],
  ),
  spec(STREAM_BACKPRESSURE, "stream.backpressure", ["stream_id", "buffer_size"], ["stream_id"]),
  spec(CACHE, "cache", ["hit", "total_tokens", "matched_tokens"], ["hit"]),
  spec(QUEUE, "queue", ["depth", "queue", "capacity"], ["queue"]),
  spec(
    USAGE,
    "usage",
    [
      "prompt_tokens",
      "completion_tokens",
      "cached_tokens",
      "images",
      "characters",
      "batch",
      "cost_usd",
    ],
    ["batch"],
  ),
  spec(METRIC, "metric", ["name", "kind", "value", "labels"], ["name", "kind", "labels"]),
];

// ------------------------------------------------------------------------------ equality

const objectKeys = new WeakMap<object, string>();

/** A canonical string for a map or list value: equal content (any key order), equal string. */
function objectKey(v: object): string {
  let key = objectKeys.get(v);
  if (key === undefined) {
    key = JSON.stringify(canonical(v));
    objectKeys.set(v, key);
  }
  return key;
}

function canonical(v: unknown): unknown {
  if (v instanceof Map) v = Object.fromEntries(v);
  if (Array.isArray(v)) return v.map(canonical);
  if (v !== null && typeof v === "object") {
    if (ArrayBuffer.isView(v)) return ["\0bin", Array.from(new Uint8Array(v.buffer, v.byteOffset, v.byteLength))];
    return Object.keys(v)
      .sort()
      .map((k) => [k, canonical((v as Record<string, unknown>)[k])]);
  }
  if (typeof v === "bigint") return ["\0big", v.toString()];
  return v;
}

/** Python's `==` for the values a row holds: null and undefined are both "absent". */
function same(a: unknown, b: unknown): boolean {
  if (a === b) return true; // (NaN !== NaN: a NaN is never equal, as in Python)
  if (a == null || b == null) return a == null && b == null;
  if (typeof a === "object" && typeof b === "object") return objectKey(a) === objectKey(b);
  return false;
}

function labelKey(v: unknown): unknown {
  if (v == null) return null;
  if (typeof v === "object") return ["o", objectKey(v)];
  if (typeof v === "bigint") return ["i", v.toString()];
  return [typeof v, v];
}

/** Split rows by key, groups in order of first appearance, rows in order within a group. */
function partition(rows: Row[], keys: string[]): Row[][] {
  const groups = new Map<string, Row[]>();
  for (let j = 0; j < rows.length; j++) {
    const k = keys[j];
    const g = groups.get(k);
    if (g === undefined) groups.set(k, [rows[j]]);
    else g.push(rows[j]);
  }
  return [...groups.values()];
}

/** Split rows of one type by the values of the labels that vary. */
function group(s: EventSpec, rows: Row[]): Row[][] {
  const n = rows.length;
  const first = rows[0];
  const varying: number[] = [];
  for (const i of s.labelIdx) {
    const v = first[i];
    for (let j = 1; j < n; j++) {
      if (!same(rows[j][i], v)) {
        varying.push(i);
        break;
      }
    }
  }
  if (varying.length === 0) return [rows];
  const keys = rows.map((r) => JSON.stringify(varying.map((i) => labelKey(r[i]))));
  return partition(rows, keys);
}

// ------------------------------------------------------------------------------ batches

/** One columnar batch, ready to pack: `[field, value, isFloat]` entries in wire order. */
export interface Built {
  rows: Row[];
  cols: [string, unknown[], boolean][];
  consts: [string, unknown, boolean][];
}

/** Columnar batches for rows that agree on their labels: one, or more if split on absence. */
export function build(s: EventSpec, rows: Row[], source: string): Built[] {
  const n = rows.length;
  const fields = s.fields;
  const isFloat = s.isFloat;
  const first = rows[0];
  const consts: [string, unknown, boolean][] = [["source", source, false]];
  for (const i of s.labelIdx) {
    const v = first[i];
    if (v != null) consts.push([fields[i - 1], v, isFloat[i]]);
  }
  const cols: [string, unknown[], boolean][] = [];
  const mixed: number[] = [];
  for (const i of s.valueIdx) {
    const v = first[i];
    let all = true;
    let someAbsent = v == null;
    for (let j = 1; j < n; j++) {
      const w = rows[j][i];
      if (all && !same(w, v)) all = false;
      if (w == null) someAbsent = true;
      if (!all && someAbsent) break;
    }
    if (all) {
      if (v == null) continue;
      if (i !== 1) {
        consts.push([fields[i - 1], v, isFloat[i]]);
        continue;
      }
    } else if (someAbsent) {
      mixed.push(i);
      continue;
    }
    const col = new Array<unknown>(n);
    for (let j = 0; j < n; j++) col[j] = rows[j][i];
    cols.push([fields[i - 1], col, isFloat[i]]);
  }
  if (mixed.length > 0) {
    const masks = rows.map((r) => mixed.map((i) => (r[i] == null ? "1" : "0")).join(""));
    return partition(rows, masks).flatMap((part) => build(s, part, source));
  }
  return [{ rows, cols, consts }];
}

/** Pack one batch: `{"v": 1, "type": T, "cols": {…}, "const": {…}}`. Throws if unpackable. */
export function packBatch(s: EventSpec, b: Built, w: Writer): Buffer {
  w.reset();
  w.mapHeader(4);
  w.key("v");
  w.u8(PROTOCOL_VERSION);
  w.key("type");
  w.key(s.type);
  w.key("cols");
  w.mapHeader(b.cols.length);
  for (const [name, col, asFloat] of b.cols) {
    w.key(name);
    w.arrayHeader(col.length);
    for (let j = 0; j < col.length; j++) w.value(col[j], asFloat);
  }
  w.key("const");
  w.mapHeader(b.consts.length);
  for (const [name, value, asFloat] of b.consts) {
    w.key(name);
    w.value(value, asFloat);
  }
  return w.take();
}

/** Pack a batch, halving it on failure or excess size; return the rows dropped. */
function pack(
  s: EventSpec,
  rows: Row[],
  built: Built | null,
  source: string,
  w: Writer,
  out: [number, Buffer][],
): number {
  const n = rows.length;
  let data: Buffer | null = null;
  try {
    if (built === null) {
      const parts = build(s, rows, source);
      if (parts.length !== 1) {
        // cannot happen: halves of a built batch agree on absence
        let dropped = 0;
        for (const p of parts) dropped += pack(s, p.rows, p, source, w, out);
        return dropped;
      }
      built = parts[0];
    }
    data = packBatch(s, built, w);
  } catch {
    data = null;
  }
  if (data !== null && data.length <= MAX_PAYLOAD_BYTES) {
    out.push([n, data]);
    return 0;
  }
  if (n === 1) return 1; // unpackable, or one event larger than a frame: the daemon would reject it
  const half = n >> 1;
  return (
    pack(s, rows.slice(0, half), null, source, w, out) +
    pack(s, rows.slice(half), null, source, w, out)
  );
}

/**
 * Encode rows into packed batches `[nEvents, bytes]`; also return the rows dropped.
 *
 * Each packed batch holds at most {@link MAX_BATCH_ROWS} events and {@link MAX_PAYLOAD_BYTES}
 * bytes, so any one of them fits in a frame with a drop report.
 */
export function encode(
  rows: Row[],
  source: string,
  w: Writer,
): { packed: [number, Buffer][]; dropped: number } {
  const packed: [number, Buffer][] = [];
  let dropped = 0;
  if (rows.length === 0) return { packed, dropped };
  // Split by type code, in order of first appearance (codes are small integers).
  const byCode: Row[][] = [];
  const order: number[] = [];
  for (let j = 0; j < rows.length; j++) {
    const r = rows[j];
    const code = r[0] as number;
    const g = byCode[code];
    if (g !== undefined) g.push(r);
    else if (SPECS[code] !== undefined) {
      byCode[code] = [r];
      order.push(code);
    } else dropped++;
  }
  for (const code of order) {
    const typed = byCode[code];
    const s = SPECS[code];
    for (let start = 0; start < typed.length; start += MAX_BATCH_ROWS) {
      const chunk =
        typed.length > MAX_BATCH_ROWS ? typed.slice(start, start + MAX_BATCH_ROWS) : typed;
      let built: Built[];
      try {
        built = group(s, chunk).flatMap((g) => build(s, g, source));
      } catch {
        dropped += chunk.length;
        continue;
      }
      for (const b of built) dropped += pack(s, b.rows, b, source, w, packed);
    }
  }
  return { packed, dropped };
}

/** Group packed batches into frames `[nEvents, parts]`, in order, first fit. */
export function assemble(packed: readonly [number, Buffer][]): [number, Buffer[]][] {
  const frames: [number, Buffer[]][] = [];
  let parts: Buffer[] = [];
  let events = 0;
  let size = 0;
  for (const [n, data] of packed) {
    if (parts.length > 0 && (events + n > MAX_BATCH_ROWS || size + data.length > MAX_PAYLOAD_BYTES)) {
      frames.push([events, parts]);
      parts = [];
      events = 0;
      size = 0;
    }
    parts.push(data);
    events += n;
    size += data.length;
  }
  if (parts.length > 0) frames.push([events, parts]);
  return frames;
}

/** One frame: a msgpack array of the packed batches, plus the drop report if any. */
export function frame(parts: readonly Buffer[], client: Buffer | null, w: Writer): Buffer {
  w.reset();
  w.arrayHeader(parts.length + (client === null ? 0 : 1));
  const header = w.take();
  return Buffer.concat(client === null ? [header, ...parts] : [header, ...parts, client]);
}

/** The SPEC §1.5 drop report, packed. */
export function clientEvent(dropped: number, source: string, w: Writer): Buffer {
  w.reset();
  w.value({ v: PROTOCOL_VERSION, type: "client", dropped, source });
  return w.take();
}

/** Every frame one flush sends for these rows (for tests and tools). */
export function encodeFrames(rows: Row[], source: string, pendingDrops = 0): Buffer[] {
  const w = new Writer();
  const { packed } = encode(rows, source, w);
  const frames = assemble(packed);
  if (frames.length === 0 && pendingDrops > 0) frames.push([0, []]);
  return frames.map(([, parts], i) =>
    frame(parts, pendingDrops > 0 && i === 0 ? clientEvent(pendingDrops, source, w) : null, w),
  );
}
