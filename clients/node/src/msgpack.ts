/**
 * A small msgpack writer for the flusher: the frame's structure and its primitive values.
 *
 * JavaScript has one number type, so the writer is told which fields are floats (SPEC §1.3's
 * float fields: `ts`, `duration_ms`, …): their numbers are always float64, like the Python
 * emitter's floats, whatever their value. Other numbers are packed as `@msgpack/msgpack` does
 * (the smallest integer type for safe integers, float64 otherwise). Nested values (metric
 * `labels`, usage `images`, anything else that is not a primitive) are packed by
 * `@msgpack/msgpack`'s `Encoder`.
 */

import { Encoder } from "@msgpack/msgpack";

const INT64_MIN = -(2n ** 63n);
const UINT64_MAX = 2n ** 64n - 1n;

/** Maps become plain objects (the Encoder would pack a Map as an empty map). */
function plain(value: unknown): unknown {
  if (value instanceof Map) {
    const out: Record<string, unknown> = {};
    for (const [k, v] of value) out[String(k)] = plain(v);
    return out;
  }
  return value;
}

export class Writer {
  buf: Buffer;
  pos = 0;
  private readonly encoder = new Encoder();
  private readonly keys = new Map<string, Buffer>();

  constructor(size = 1 << 16) {
    this.buf = Buffer.allocUnsafe(size);
  }

  reset(): void {
    this.pos = 0;
  }

  /** A copy of what was written since the last reset. */
  take(): Buffer {
    return Buffer.from(this.buf.subarray(0, this.pos));
  }

  private ensure(n: number): void {
    const need = this.pos + n;
    if (need <= this.buf.length) return;
    let size = this.buf.length * 2;
    while (size < need) size *= 2;
    const next = Buffer.allocUnsafe(size);
    this.buf.copy(next, 0, 0, this.pos);
    this.buf = next;
  }

  u8(b: number): void {
    this.ensure(1);
    this.buf[this.pos++] = b;
  }

  raw(bytes: Uint8Array): void {
    this.ensure(bytes.length);
    this.buf.set(bytes, this.pos);
    this.pos += bytes.length;
  }

  nil(): void {
    this.u8(0xc0);
  }

  bool(b: boolean): void {
    this.u8(b ? 0xc3 : 0xc2);
  }

  float64(x: number): void {
    this.ensure(9);
    this.buf[this.pos] = 0xcb;
    this.buf.writeDoubleBE(x, this.pos + 1);
    this.pos += 9;
  }

  /** A number the way `@msgpack/msgpack` (and msgpack-python, for ints) packs it. */
  number(x: number): void {
    if (!Number.isSafeInteger(x)) {
      this.float64(x);
      return;
    }
    this.ensure(9);
    const b = this.buf;
    let p = this.pos;
    if (x >= 0) {
      if (x < 0x80) b[p++] = x;
      else if (x < 0x100) {
        b[p++] = 0xcc;
        b[p++] = x;
      } else if (x < 0x10000) {
        b[p++] = 0xcd;
        b.writeUInt16BE(x, p);
        p += 2;
      } else if (x < 0x100000000) {
        b[p++] = 0xce;
        b.writeUInt32BE(x, p);
        p += 4;
      } else {
        b[p++] = 0xcf;
        b.writeBigUInt64BE(BigInt(x), p);
        p += 8;
      }
    } else if (x >= -0x20) b[p++] = 0xe0 | (x + 0x20);
    else if (x >= -0x80) {
      b[p++] = 0xd0;
      b.writeInt8(x, p);
      p += 1;
    } else if (x >= -0x8000) {
      b[p++] = 0xd1;
      b.writeInt16BE(x, p);
      p += 2;
    } else if (x >= -0x80000000) {
      b[p++] = 0xd2;
      b.writeInt32BE(x, p);
      p += 4;
    } else {
      b[p++] = 0xd3;
      b.writeBigInt64BE(BigInt(x), p);
      p += 8;
    }
    this.pos = p;
  }

  bigint(x: bigint): void {
    if (x >= 0n) {
      if (x > UINT64_MAX) throw new RangeError("integer out of range");
      if (x <= BigInt(Number.MAX_SAFE_INTEGER)) return this.number(Number(x));
      this.ensure(9);
      this.buf[this.pos] = 0xcf;
      this.buf.writeBigUInt64BE(x, this.pos + 1);
    } else {
      if (x < INT64_MIN) throw new RangeError("integer out of range");
      if (x >= BigInt(Number.MIN_SAFE_INTEGER)) return this.number(Number(x));
      this.ensure(9);
      this.buf[this.pos] = 0xd3;
      this.buf.writeBigInt64BE(x, this.pos + 1);
    }
    this.pos += 9;
  }

  str(s: string): void {
    const n = Buffer.byteLength(s, "utf8");
    this.ensure(n + 5);
    const b = this.buf;
    if (n < 32) b[this.pos++] = 0xa0 | n;
    else if (n < 0x100) {
      b[this.pos++] = 0xd9;
      b[this.pos++] = n;
    } else if (n < 0x10000) {
      b[this.pos] = 0xda;
      b.writeUInt16BE(n, this.pos + 1);
      this.pos += 3;
    } else {
      b[this.pos] = 0xdb;
      b.writeUInt32BE(n, this.pos + 1);
      this.pos += 5;
    }
    this.pos += n < 64 && isAscii(s) ? writeAscii(b, s, this.pos) : b.write(s, this.pos, "utf8");
  }

  /** A field name or other string that recurs in every frame: packed once, then copied. */
  key(s: string): void {
    let packed = this.keys.get(s);
    if (packed === undefined) {
      const start = this.pos;
      this.str(s);
      packed = Buffer.from(this.buf.subarray(start, this.pos));
      if (this.keys.size < 4096) this.keys.set(s, packed);
      return;
    }
    this.raw(packed);
  }

  arrayHeader(n: number): void {
    this.ensure(5);
    if (n < 16) this.buf[this.pos++] = 0x90 | n;
    else if (n < 0x10000) {
      this.buf[this.pos] = 0xdc;
      this.buf.writeUInt16BE(n, this.pos + 1);
      this.pos += 3;
    } else {
      this.buf[this.pos] = 0xdd;
      this.buf.writeUInt32BE(n, this.pos + 1);
      this.pos += 5;
    }
  }

  mapHeader(n: number): void {
    this.ensure(5);
    if (n < 16) this.buf[this.pos++] = 0x80 | n;
    else if (n < 0x10000) {
      this.buf[this.pos] = 0xde;
      this.buf.writeUInt16BE(n, this.pos + 1);
      this.pos += 3;
    } else {
      this.buf[this.pos] = 0xdf;
      this.buf.writeUInt32BE(n, this.pos + 1);
      this.pos += 5;
    }
  }

  /** Any value; a number in a float field (`asFloat`) is float64. Throws if unpackable. */
  value(v: unknown, asFloat = false): void {
    switch (typeof v) {
      case "number":
        if (asFloat) this.float64(v);
        else this.number(v);
        return;
      case "string":
        this.str(v);
        return;
      case "boolean":
        this.bool(v);
        return;
      case "bigint":
        this.bigint(v);
        return;
      case "undefined":
        this.nil();
        return;
      case "object":
        if (v === null) {
          this.nil();
          return;
        }
        this.raw(this.encoder.encode(plain(v)));
        return;
      default:
        throw new TypeError(`cannot serialize a ${typeof v}`);
    }
  }
}

function isAscii(s: string): boolean {
  for (let i = 0; i < s.length; i++) if (s.charCodeAt(i) > 0x7f) return false;
  return true;
}

function writeAscii(b: Buffer, s: string, at: number): number {
  for (let i = 0; i < s.length; i++) b[at + i] = s.charCodeAt(i);
  return s.length;
}
