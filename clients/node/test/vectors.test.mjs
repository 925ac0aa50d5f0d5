// The Node emitter and @msgpack/msgpack against the conformance vectors (tests/vectors/).

import assert from "node:assert/strict";
import { describe, test } from "node:test";

import { decode } from "@msgpack/msgpack";

import { encodeFrames } from "../dist/wire.js";
import {
  canonical,
  expand,
  expectedEvents,
  frameBytes,
  loadVectors,
  normalise,
  NOW,
  record,
  sortEvents,
  untag,
} from "./helpers.mjs";

const VECTORS = loadVectors();

test("the vector set is complete", () => {
  assert.ok(VECTORS.length >= 50, `only ${VECTORS.length} vectors`);
  const reasons = new Set(VECTORS.flatMap((v) => Object.keys(v.rejected)));
  assert.deepEqual(
    [...reasons].sort(),
    ["bad_value", "decode", "missing_field", "shape", "too_large", "too_many", "unknown_type", "version"],
  );
  const types = new Set(VECTORS.flatMap((v) => v.events.map((e) => e.type)));
  assert.equal(types.size, 11);
  assert.ok(VECTORS.filter((v) => v.emitter).length >= 5);
});

describe("every vector decodes with @msgpack/msgpack to its frame", () => {
  for (const v of VECTORS) {
    test(v.name, () => {
      const data = frameBytes(v);
      if (v.rejected.decode) {
        assert.throws(() => decode(data));
        return;
      }
      const obj = decode(data);
      if (v.frame !== undefined) assert.deepEqual(canonical(obj), canonical(untag(v.frame)));
      if (v.rejected.too_large) assert.ok(data.length > 1 << 20);
      if (v.name === "limit_1mib_frame") assert.equal(data.length, 1 << 20);
      if (v.accepted > 0 && Object.keys(v.rejected).length === 0 && v.truncated === undefined) {
        // the rows by SPEC §1.2's rule are the expected events (schema fields only)
        const rows = expand(obj).map((r) => {
          const { pad: _pad, future_field: _f, nested: _n, ...rest } = r;
          return rest;
        });
        assert.deepEqual(sortEvents(rows), sortEvents(expectedEvents(v)));
      }
    });
  }
});

describe("the Node emitter's frames are the emitter vectors, byte for byte", () => {
  for (const v of VECTORS.filter((x) => x.emitter)) {
    test(v.name, async () => {
      const { source, calls, pending_drops: pending = 0 } = v.emitter;
      const rows = await record(source, calls);
      const frames = encodeFrames(rows, source, pending);
      assert.deepEqual(
        frames.map((f) => f.toString("hex")),
        [v.hex],
      );
    });
  }
});

describe("the Node emitter encodes every accepted vector's events", () => {
  for (const v of VECTORS.filter((x) => !x.emitter && x.accepted > 0)) {
    test(v.name, async () => {
      const events = expectedEvents(v).filter((e) => e.type !== "client");
      const bySource = new Map();
      for (const e of events) {
        const { source = "default", ...call } = e;
        call.ts ??= NOW;
        if (!bySource.has(source)) bySource.set(source, []);
        bySource.get(source).push(call);
      }
      const got = [];
      for (const [source, calls] of bySource) {
        for (const data of encodeFrames(await record(source, calls), source)) {
          assert.ok(data.length <= 1 << 20);
          got.push(...expand(decode(data)));
        }
      }
      assert.deepEqual(sortEvents(got.map(normalise)), sortEvents(events.map(normalise)));
    });
  }
});
