"""Property tests: decode never raises and never returns a malformed batch."""

from __future__ import annotations

import os
from typing import Any

import msgpack
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from metricsd.protocol import REASONS, Limits, decode
from metricsd.schema import EVENT_TYPES

NOW = 1_700_000_000.0
#: A short run in CI; `METRICSD_FUZZ_EXAMPLES=100000` for a long one.
EXAMPLES = int(os.environ.get("METRICSD_FUZZ_EXAMPLES", "500"))
LIMITS = Limits(max_events=200, max_frame_bytes=64 * 1024)

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=300),
    st.binary(max_size=20),
    st.builds(msgpack.ExtType, st.integers(min_value=0, max_value=6), st.binary(max_size=40)),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=6),
        st.dictionaries(st.one_of(st.text(max_size=12), st.integers()), inner, max_size=6),
    ),
    max_leaves=30,
)
field_names = st.sampled_from(sorted({f for t in EVENT_TYPES.values() for f in t} | {"v", "x"}))
type_names = st.one_of(st.sampled_from(sorted(EVENT_TYPES)), st.text(max_size=8), st.integers())
events = st.dictionaries(field_names, values, max_size=8).flatmap(
    lambda d: st.builds(lambda t: {**d, "type": t}, type_names)
)


def dict_column(n: int) -> st.SearchStrategy[msgpack.ExtType]:
    """A dictionary column of ``n`` rows (ext type 5), its codes sometimes past its values."""
    return st.builds(
        lambda vals, codes: msgpack.ExtType(
            5, msgpack.packb([vals, bytes(codes)], default=lambda o: None)
        ),
        st.lists(scalars, max_size=6),
        st.lists(st.integers(min_value=0, max_value=7), min_size=n, max_size=n),
    )


columns = st.integers(min_value=0, max_value=5).flatmap(
    lambda n: st.dictionaries(
        field_names,
        st.one_of(st.lists(values, min_size=n, max_size=n), dict_column(n)),
        max_size=5,
    )
)
columnar = st.builds(
    lambda t, cols, const: {"type": t, "cols": cols, "const": const},
    type_names,
    columns,
    st.dictionaries(field_names, values, max_size=5),
)
frames = st.one_of(
    values, events, columnar, st.lists(st.one_of(events, columnar, values), max_size=8)
)


def check(result: Any) -> None:
    assert set(result.rejected) <= set(REASONS)
    assert all(v > 0 for v in result.rejected.values())
    for batch in result.batches:
        assert batch.type in EVENT_TYPES
        assert batch.n >= 1
        schema = EVENT_TYPES[batch.type]
        assert "api_key" not in batch.const and "api_key" not in batch.cols
        names = (set(batch.const) | set(batch.cols)) - {"key_id"}
        assert names <= set(schema)
        for name, col in batch.cols.items():
            assert len(col) == batch.n, name
            if isinstance(col, np.ndarray):
                assert col.ndim == 1
                if col.dtype == np.float64 and name == "duration_ms":
                    assert np.all(np.isfinite(col)) and np.all(col >= 0)
        for f in schema.values():
            if f.required:
                assert f.name in batch.const or f.name in batch.cols
                if f.name in batch.const:
                    assert batch.const[f.name] is not None


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frames)
def test_decode_structured_frames(frame: Any) -> None:
    try:
        data = msgpack.packb(frame)
    except (OverflowError, ValueError, TypeError):
        return
    check(decode(data, NOW, LIMITS))


@settings(max_examples=EXAMPLES, deadline=None)
@given(st.binary(max_size=512))
def test_decode_arbitrary_bytes(data: bytes) -> None:
    check(decode(data, NOW, LIMITS))
