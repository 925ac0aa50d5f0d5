"""hist: bulk recording is bit-identical to hdrhistogram's one-by-one; quantiles within 1 %."""

from __future__ import annotations

import numpy as np
import pytest
from hdrh.histogram import HdrHistogram

from metricsd.hist import Buckets, Hist, Layout


@pytest.fixture(scope="module")
def layout() -> Layout:
    return Layout(highest=3_600_000_000, significant_figures=2, scale=1000.0)


def values(seed: int, n: int = 50_000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate(
        [
            rng.lognormal(4.0, 2.0, n),  # ms, very wide
            rng.uniform(0, 1, 1000),  # sub-ms
            [0.0, 0.0005, 0.001, 0.256, 1000.0, 3_600_000.0],
        ]
    )


@pytest.mark.parametrize("figures", [1, 2, 3])
def test_bulk_record_is_bit_identical_to_hdrh(figures: int) -> None:
    layout = Layout(highest=3_600_000_000, significant_figures=figures, scale=1000.0)
    data = values(figures)
    raw, clamped = layout.to_raw(data)
    assert clamped == 0
    reference = HdrHistogram(1, 3_600_000_000, figures)
    for v in raw.tolist():
        assert reference.record_value(v)
    hist = Hist(layout)
    hist.record_array(data)
    assert np.array_equal(np.ctypeslib.as_array(reference.counts), hist.counts)
    assert hist.encode() == reference.encode().decode()


def test_out_of_range_values_clamped_and_counted(layout: Layout) -> None:
    hist = Hist(layout)
    hist.record_array(np.array([5.0, 4_000_000.0, 1e12]))
    assert hist.clamped == 2
    assert hist.count == 3
    assert hist.max == 1e12  # exact max is kept beside the histogram
    assert hist.counts.sum() == 3


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_quantiles_within_one_percent_of_numpy(layout: Layout, seed: int) -> None:
    data = np.random.default_rng(seed).lognormal(5.0, 1.0, 100_000)
    hist = Hist(layout)
    hist.record_array(data)
    qs = (0.5, 0.9, 0.95, 0.99, 0.999)
    got = hist.quantiles(qs)
    exact = np.percentile(data, [q * 100 for q in qs])
    for g, e in zip(got, exact, strict=True):
        assert abs(g - e) / e <= 0.01, (g, e)
    assert hist.quantiles((0.0,))[0] >= data.min()
    assert hist.quantiles((1.0,))[0] <= data.max()


def test_merge_equals_recording_everything(layout: Layout) -> None:
    data = values(7, 5000)
    a, b, whole = Hist(layout), Hist(layout), Hist(layout)
    a.record_array(data[:2000])
    b.record_array(data[2000:])
    whole.record_array(data)
    a.merge(b)
    assert np.array_equal(a.counts, whole.counts)
    assert a.count == whole.count and a.min == whole.min and a.max == whole.max
    with pytest.raises(ValueError):
        a.merge(Hist(Layout(highest=1000, significant_figures=2)))


def test_encode_decode_roundtrip(layout: Layout) -> None:
    hist = Hist(layout)
    hist.record_array(values(3, 2000))
    back = Hist.decode(layout, hist.encode())
    assert np.array_equal(back.counts, hist.counts)
    assert back.count == hist.count


def test_buckets_exact_at_bounds() -> None:
    bounds = (0.01, 0.02, 0.04)
    b = Buckets(bounds)
    data = np.array([0.005, 0.01, 0.0100001, 0.02, 0.03, 0.04, 0.05, 100.0])
    b.record_array(data)
    # le is ≤: 0.01 counts in the first bucket, 0.0100001 in the second.
    assert b.cumulative() == [2, 4, 6, 8]
    assert b.count == 8
    rng = np.random.default_rng(0)
    data = rng.exponential(0.02, 10_000)
    b = Buckets(bounds)
    b.record_array(data)
    exact = [int(np.count_nonzero(data <= x)) for x in bounds] + [len(data)]
    assert b.cumulative() == exact
