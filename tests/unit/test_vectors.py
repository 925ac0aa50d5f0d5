"""The daemon's decoder against the language-neutral conformance vectors (tests/vectors/).

Every vector's bytes go through ``metricsd.protocol.decode`` with the default limits; the
accepted events must equal the vector's ``events`` (as a multiset, with the defaults of SPEC §1.3
filled in and ``api_key`` replaced by its ``key_id``), and the rejects its ``rejected`` counts.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest

from metricsd.protocol import REASONS, Limits, decode, hash_key
from metricsd.schema import EVENT_TYPES

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "vectors"))
import vectorlib  # noqa: E402

VECTORS = vectorlib.load_all()
IDS = [v["name"] for v in VECTORS]


def daemon_view(event: dict[str, Any]) -> dict[str, Any]:
    """What the daemon must hold for an expected event: every schema field, defaults filled."""
    fields = EVENT_TYPES[event["type"]]
    out: dict[str, Any] = {name: f.default for name, f in fields.items() if name != "api_key"}
    out["ts"] = vectorlib.NOW
    out["type"] = event["type"]
    for k, v in event.items():
        if k in fields or k == "type":
            out[k] = v
    raw = out.pop("api_key", None)
    if raw is not None:
        out["key_id"] = hash_key(raw)
    return out


def decoded_rows(result: Any) -> list[dict[str, Any]]:
    out = []
    for batch in result.batches:
        for row in batch.rows():
            row = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in row.items()}
            out.append({**row, "type": batch.type})
    return out


def test_vectors_exist_for_every_reason_type_and_shape() -> None:
    names = set(IDS)
    rejected = {r for v in VECTORS for r in v["rejected"]}
    assert rejected == set(REASONS)
    accepted_types = {e["type"] for v in VECTORS for e in v["events"]}
    assert accepted_types == set(EVENT_TYPES)
    for shape in ("event", "array", "columnar", "array_of_batches"):
        assert f"shape_{shape}" in names


def test_defaults_file_matches_the_schema() -> None:
    table = vectorlib.defaults()
    assert table["*"] == {"source": "default"}
    for t, fields in EVENT_TYPES.items():
        want = {n: f.default for n, f in fields.items() if f.default is not None and n != "source"}
        assert table[t] == want, t


@pytest.mark.parametrize("vector", VECTORS, ids=IDS)
def test_vector(vector: dict[str, Any]) -> None:
    data = vectorlib.frame_bytes(vector)
    result = decode(data, vectorlib.NOW, Limits())
    assert dict(result.rejected) == vector["rejected"]
    assert result.accepted == vector["accepted"]
    assert result.truncated == vector.get("truncated", 0)
    got = vectorlib.sort_events(decoded_rows(result))
    want = vectorlib.sort_events([daemon_view(e) for e in vectorlib.expected_events(vector)])
    assert got == want


@pytest.mark.parametrize("vector", [v for v in VECTORS if "frame" in v], ids=lambda v: v["name"])
def test_frame_is_the_bytes(vector: dict[str, Any]) -> None:
    """``frame`` (tagged JSON) decodes from, and packs back to, exactly the vector's bytes."""
    data = vectorlib.frame_bytes(vector)
    frame = vectorlib.untag(vector["frame"])
    decoded = msgpack.unpackb(data, raw=False, strict_map_key=False)
    assert vectorlib.canonical(decoded) == vectorlib.canonical(frame)
    assert msgpack.packb(frame, use_bin_type=True) == data


def test_docs_examples_are_the_shape_vectors() -> None:
    """The four hex dumps of docs/protocol.md are the shape vectors' bytes."""
    doc = (ROOT / "docs" / "protocol.md").read_text(encoding="utf-8")
    dumps = [re.sub(r"\s", "", b) for b in re.findall(r"\d+ bytes:\n```\n(.*?)```", doc, re.S)]
    names = ["shape_event", "shape_array", "shape_columnar", "shape_array_of_batches"]
    by_name = {v["name"]: v for v in VECTORS}
    assert dumps == [by_name[n]["hex"] for n in names]


def test_generated_files_are_up_to_date() -> None:
    """The committed JSON is what generate.py writes (run it after changing a description)."""
    import generate

    assert generate.main(["--check"]) == 0


def test_vector_files_are_plain_json() -> None:
    for path in vectorlib.vector_paths():
        json.loads(path.read_text(encoding="utf-8"), parse_constant=_no_constants)


def _no_constants(name: str) -> None:
    raise AssertionError(f"non-standard JSON constant {name}")
