"""Reading the conformance vectors (see README.md here): the reference reader for Python.

Used by ``generate.py`` (to check what it writes) and by the Python tests of the daemon's
decoder and of the Python emitter. Other languages reimplement these few functions; nothing
here depends on metricsd.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
#: ``now`` for decoding: an event without ``ts`` gets this arrival time.
NOW = 1_700_000_000.0
#: Emitter methods by event type (Python names; the Node emitter uses camelCase).
METHODS = {
    "request": "request",
    "error": "error",
    "stream.start": "stream_start",
    "stream.token": "stream_token",
    "stream.end": "stream_end",
    "stream.backpressure": "stream_backpressure",
    "cache": "cache",
    "queue": "queue",
    "usage": "usage",
    "metric": "metric",
}


def vector_paths() -> list[Path]:
    """Every vector file, sorted (``defaults.json`` is not a vector)."""
    return sorted(p for p in HERE.glob("*.json") if p.name != "defaults.json")


def load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def load_all() -> list[dict[str, Any]]:
    return [load(p) for p in vector_paths()]


def defaults() -> dict[str, dict[str, Any]]:
    """``{type: {field: default}}`` for every field with a non-null default (``*``: common)."""
    data: dict[str, dict[str, Any]] = json.loads((HERE / "defaults.json").read_text())
    return data


def frame_bytes(vector: dict[str, Any]) -> bytes:
    """The frame: ``hex``, or the concatenation of ``hex_parts`` (each ``repeat`` times)."""
    if "hex" in vector:
        return bytes.fromhex(vector["hex"])
    return b"".join(
        bytes.fromhex(part["hex"]) * int(part.get("repeat", 1)) for part in vector["hex_parts"]
    )


def untag(value: Any) -> Any:
    """The msgpack value a tagged JSON value stands for.

    ``{"$float": "NaN" | "Infinity" | "-Infinity"}`` is that float64, ``{"$bin": hex}`` a msgpack
    bin; everything else is itself (recursively).
    """
    if isinstance(value, dict):
        if len(value) == 1 and "$float" in value:
            return float(value["$float"].replace("Infinity", "inf"))
        if len(value) == 1 and "$bin" in value:
            return bytes.fromhex(value["$bin"])
        return {k: untag(v) for k, v in value.items()}
    if isinstance(value, list):
        return [untag(v) for v in value]
    return value


def expected_events(vector: dict[str, Any]) -> list[dict[str, Any]]:
    """The vector's ``events``, with ``$repeat`` expanded."""
    out: list[dict[str, Any]] = []
    for event in vector.get("events", []):
        event = dict(event)
        repeat = int(event.pop("$repeat", 1))
        out.extend(dict(event) for _ in range(repeat))
    return out


def expand(obj: Any) -> Iterator[dict[str, Any]]:
    """Rows of a decoded frame, by the wire rule of SPEC §1.2 (no validation, no defaults).

    A map with ``cols`` or ``const`` is a columnar batch: row i is
    ``{"type": T, **const, **{f: cols[f][i]}}``; any other map is one event; an array holds
    either. ``v`` is dropped.
    """
    items = obj if isinstance(obj, list) else [obj]
    for item in items:
        if "cols" in item or "const" in item:
            const = item.get("const", {})
            cols = item.get("cols", {})
            n = max((len(c) for c in cols.values()), default=1)
            for i in range(n):
                row = {"type": item["type"], **const, **{f: c[i] for f, c in cols.items()}}
                row.pop("v", None)
                yield row
        else:
            row = dict(item)
            row.pop("v", None)
            yield row


def normalise(event: dict[str, Any]) -> dict[str, Any]:
    """An event with every default of ``defaults.json`` filled in and ``ts`` defaulted to NOW."""
    table = defaults()
    t = event["type"]
    out: dict[str, Any] = {"type": t, "ts": NOW, **table["*"], **table.get(t, {})}
    for k, v in event.items():
        if k == "v" or v is None:
            continue
        out[k] = v
    return out


def canonical(value: Any) -> Any:
    """Numbers as floats (1 == 1.0), NaN as None, maps with sorted keys: for comparisons."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        f = float(value)
        return None if math.isnan(f) else f
    if isinstance(value, dict):
        return {str(k): canonical(v) for k, v in sorted(value.items())}
    if isinstance(value, (list, tuple)):
        return [canonical(v) for v in value]
    return value


def sort_events(events: list[dict[str, Any]]) -> list[Any]:
    """A canonical, order-free form of a list of events (a receiver may reorder them)."""
    return sorted(
        (canonical(e) for e in events), key=lambda e: json.dumps(e, sort_keys=True, default=str)
    )
