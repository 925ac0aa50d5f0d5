"""The cost tracker through the engine, with a synthetic clock and exact expected values."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import msgpack
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families as parse_text

from metricsd.config import Config, load_config
from metricsd.engine import Engine
from metricsd.export.prometheus import render_both
from metricsd.protocol import Batch, decode, hash_key
from metricsd.snapshot import Snapshot
from metricsd.trackers.base import Ctx
from metricsd.trackers.cost import CostTracker

WALL = 1_774_994_400.0  # 2026-03-31 22:00:00 UTC
HOUR, DAY = 3600.0, 86400.0
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


class Harness:
    def __init__(self, config: Config | None = None, **cost: Any) -> None:
        self.config = config or load_config(environ={}, overrides={"cost": cost} if cost else None)
        self.tracker = CostTracker(self.config, 0.0, WALL)
        self.engine = Engine(self.config, [self.tracker])

    def send(self, frame: Any, now: float = 1.0) -> None:
        packed = msgpack.packb(frame)
        self.engine.apply(decode(packed, WALL + now, self.engine.limits), now, WALL + now)

    def snap(self, now: float = 2.0) -> Snapshot:
        return self.engine.snapshot(now, WALL + now)

    def summary(self, now: float = 2.0) -> dict[str, Any]:
        return self.snap(now).view("costs")

    def key(self, raw: str, now: float = 2.0) -> dict[str, Any]:
        view = self.snap(now).parts["cost"].key(hash_key(raw), now, WALL + now)
        assert view is not None
        return view

    def samples(self, now: float = 2.0) -> Samples:
        text = render_both(self.snap(now).families())[0].decode()
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in parse_text(text)
            for s in fam.samples
        }


def req(model: str, i: int = 0, o: int = 0, **fields: Any) -> dict[str, Any]:
    return {
        "type": "request",
        "duration_ms": 100.0,
        "model": model,
        "input_tokens": i,
        "output_tokens": o,
        **fields,
    }


# Reference §7's cost table (FakeAI's tests), every case that applies.
WORKED = [
    (req("gpt-4o", 100, 50), "0.00125"),
    (req("gpt-3.5-turbo", 1000, 500), "0.00125"),
    (req("text-embedding-3-small", 1000), "0.00002"),
    (req("gpt-4o", 1000, 500, cached_tokens=500), "0.01125"),
    ({"type": "usage", "model": "dall-e-3", "images": {"size": "1024x1024"}}, "0.04"),
    (
        {"type": "usage", "model": "dall-e-3", "images": {"size": "1024x1792", "quality": "hd"}},
        "0.12",
    ),
    ({"type": "usage", "model": "tts-1", "characters": 1000}, "0.015"),
    (req("ft:gpt-4o-2024-08-06:my-org::abc123", 1000, 500), "0.01125"),
    (req("ft:gpt-4o-mini-2024-07-18:my-org::abc123", 1000, 500), "0.0009"),
    (
        {"type": "usage", "model": "gpt-4o", "prompt_tokens": 100, "completion_tokens": 50},
        "0.00125",
    ),
]


@pytest.mark.parametrize("event,expected", WORKED)
def test_worked_values(event: dict[str, Any], expected: str) -> None:
    h = Harness()
    h.send({**event, "api_key": "sk-test"})
    s = h.summary()
    assert s["total_cost_usd_str"] == expected
    assert s["total_cost_usd"] == float(expected)
    assert h.key("sk-test")["total_cost_usd_str"] == expected
    assert s["unpriced_requests"] == 0


def test_three_keys_total() -> None:
    h = Harness()
    h.send([req("gpt-4o", 100, 50, api_key=f"sk-{i}") for i in range(3)])
    s = h.summary()
    assert s["total_cost_usd_str"] == "0.00375"
    assert (s["total_requests"], s["unique_api_keys"]) == (3, 3)
    assert s["by_key"] == {hash_key(f"sk-{i}"): 0.00125 for i in range(3)}
    assert h.key("sk-1")["tokens"] == {
        "input": 100,
        "output": 50,
        "cached": 0,
        "cache_write": 0,
        "total": 150,
    }


def test_unknown_model_is_unpriced_not_guessed() -> None:
    # FakeAI billed unknown models at gpt-3.5-turbo prices (0.000125 here); metricsd never guesses.
    h = Harness()
    h.send(req("mystery-model", 100, 50))
    h.send(req("mystery-model"))  # nothing billable: not counted as unpriced
    s = h.summary()
    assert s["total_cost_usd_str"] == "0"
    assert s["unpriced_requests"] == 1 and s["unpriced_by_model"] == {"mystery-model": 1}
    assert h.samples()[("llm_unpriced_requests_total", (("model", "mystery-model"),))] == 1
    h.send(req("mystery-model", 100, 50, cost_usd=0.5))  # a given cost is always used
    assert h.summary()["total_cost_usd_str"] == "0.5"


def test_cached_above_input_is_clamped_never_negative() -> None:
    # FakeAI: gpt-4o, 100 prompt / 500 cached → −0.00075.
    h = Harness()
    h.send(req("gpt-4o", 100, 0, cached_tokens=500))
    s = h.summary()
    assert s["total_cost_usd_str"] == "0.00025"  # the 100 input tokens, all at the cached price
    assert s["clamped_requests"] == 1
    assert h.samples()[("metricsd_cost_clamped_total", ())] == 1


def test_anthropic_input_excludes_cached_tokens() -> None:
    h = Harness()
    h.send(
        req(
            "claude-3-5-sonnet-20241022",
            1000,
            100,
            cached_tokens=2000,
            cache_write_tokens=500,
        )
    )
    # 1000 × $3 + 2000 × $0.30 + 500 × $3.75 + 100 × $15, per 1M tokens.
    s = h.summary()
    assert s["total_cost_usd_str"] == "0.006975"
    assert s["clamped_requests"] == 0
    cache = s["cache_savings"]
    assert cache["cached_tokens"] == 2000
    assert cache["savings_usd_str"] == "0.0054"  # 2000 × ($3 − $0.30) / 1M
    assert cache["write_premium_usd"] == 0.000375  # 500 × ($3.75 − $3) / 1M
    # The provider field decides, whatever the model name.
    h.send(req("gpt-4o", 1000, 0, cached_tokens=500, provider="anthropic"))
    assert h.summary()["by_model"]["gpt-4o"] == 0.00625  # 1000 × $5 + 500 × $2.5


def test_batch_halves_table_prices_not_given_costs() -> None:
    h = Harness()
    h.send(req("gpt-4o", 1000, 500, batch=True))
    s = h.summary()
    assert s["total_cost_usd_str"] == "0.00625"
    assert s["batch_savings"] == {
        "batch_requests": 1,
        "savings_usd": 0.00625,
        "savings_usd_str": "0.00625",
        "regular_cost_usd": 0.0125,
        "batch_cost_usd": 0.00625,
    }
    h.send(req("gpt-4o", 1000, 500, batch=True, cost_usd=0.123456789012))
    assert h.summary()["total_cost_usd_str"] == "0.129706789012"


def test_images_and_audio_fall_through_to_unpriced() -> None:
    h = Harness()
    h.send({"type": "usage", "model": "dall-e-3", "images": {"size": "9x9", "n": 2}})
    h.send({"type": "usage", "model": "dall-e-2", "images": {"size": "512x512", "n": 3}})
    h.send({"type": "usage", "model": "tts-1-hd", "characters": 2_000_000})
    s = h.summary()
    assert s["by_model"] == {"dall-e-2": 0.054, "dall-e-3": 0.0, "tts-1-hd": 60.0}
    assert s["unpriced_by_model"] == {"dall-e-3": 1}


def test_columnar_batches_mixed_models_and_keys() -> None:
    h = Harness()
    h.send(
        {
            "type": "request",
            "const": {"endpoint": "/v1/chat/completions"},
            "cols": {
                "duration_ms": [1.0] * 4,
                "model": ["gpt-4o", "gpt-4o-mini", "gpt-4o", "nope"],
                "api_key": ["a", "a", "b", "b"],
                "input_tokens": [100, 1000, 100, 5],
                "output_tokens": [50, 1000, 50, 5],
                "cached_tokens": [0, 1000, 0, 0],
                "batch": [False, True, False, False],
            },
        }
    )
    s = h.summary()
    # gpt-4o-mini: (1000 × $0.075 + 1000 × $0.60) / 1M / 2 = 0.0003375
    assert s["by_model"] == {"gpt-4o": 0.0025, "gpt-4o-mini": 0.0003375, "nope": 0.0}
    assert s["by_endpoint"] == {"/v1/chat/completions": 0.0028375}
    assert h.key("a")["by_model"] == {"gpt-4o": 0.00125, "gpt-4o-mini": 0.0003375}
    samples = h.samples()
    labels = (("endpoint", "/v1/chat/completions"), ("key_id", hash_key("b")), ("model", "gpt-4o"))
    assert samples[("llm_cost_usd_total", labels)] == 0.00125
    assert samples[("cost_total_usd", ())] == 0.0028375
    assert samples[("cost_by_model_usd", (("model", "gpt-4o-mini"),))] == 0.0003375


def test_a_million_small_costs_sum_exactly() -> None:
    h = Harness()
    rng = np.random.default_rng(7)
    expected = Decimal(0)
    prices = {"gpt-4o-mini": (Decimal("0.15"), Decimal("0.075"), Decimal("0.6"))}
    for _ in range(100):
        inp = rng.integers(1, 30, 10_000)
        cached = rng.integers(0, 2, 10_000) * inp // 2
        out = rng.integers(0, 7, 10_000)
        h.send(
            {
                "type": "request",
                "const": {"model": "gpt-4o-mini", "api_key": "k"},
                "cols": {
                    "duration_ms": [1.0] * 10_000,
                    "input_tokens": inp.tolist(),
                    "cached_tokens": cached.tolist(),
                    "output_tokens": out.tolist(),
                },
            }
        )
        p_in, p_cached, p_out = prices["gpt-4o-mini"]
        expected += (
            int((inp - cached).sum()) * p_in + int(cached.sum()) * p_cached + int(out.sum()) * p_out
        ) / Decimal(10**6)
    s = h.summary()
    assert s["total_requests"] == 1_000_000
    assert Decimal(s["total_cost_usd_str"]) == expected
    assert Decimal(h.key("k")["total_cost_usd_str"]) == expected
    # What a float accumulator would have said differs in the last digits; ours does not.
    assert s["total_cost_usd"] == float(round(expected, 9))


def test_cost_histogram_buckets_are_exact_at_the_bounds() -> None:
    h = Harness()
    h.send(req("gpt-4o", 200))  # exactly $0.001
    h.send(req("gpt-4o", 201))  # just above
    h.send(req("mystery", 5))  # unpriced: not in the histogram
    s = h.samples()
    le = lambda v: (("le", v), ("model", "gpt-4o"))  # noqa: E731
    assert s[("llm_request_cost_usd_bucket", le("0.0001"))] == 0
    assert s[("llm_request_cost_usd_bucket", le("0.001"))] == 1
    assert s[("llm_request_cost_usd_bucket", le("0.01"))] == 2
    assert s[("llm_request_cost_usd_count", (("model", "gpt-4o"),))] == 2
    assert s[("llm_request_cost_usd_sum", (("model", "gpt-4o"),))] == 0.002005
    assert ("llm_request_cost_usd_count", (("model", "mystery"),)) not in s


def test_windows_and_projection() -> None:
    h = Harness()
    h.send(req("gpt-4", 1000, 0, api_key="k"), now=100.0)  # $0.03
    s = h.summary(now=2 * HOUR)
    # Observed for 2 h (< 7 d): $0.03 / 7200 s × 30 d.
    assert s["projection_basis_seconds"] == 7200.0
    assert s["projected_monthly_cost_usd"] == 10.8
    assert h.summary(now=60.0)["projection_basis_seconds"] == 3600.0  # at least an hour
    h.send(req("gpt-4", 2000, 0, api_key="k"), now=2 * DAY)  # $0.06
    s = h.summary(now=2 * DAY + 10)
    assert (s["cost_24h_usd_str"], s["cost_7d_usd_str"]) == ("0.06", "0.09")
    k = h.key("k", now=8 * DAY)
    assert (k["cost_24h_usd"], k["cost_7d_usd_str"], k["total_cost_usd_str"]) == (0, "0.06", "0.09")
    s = h.summary(now=8 * DAY)
    # Observed 8 d: the last 7 d window (current hour + 167 before it) is the basis.
    assert s["projection_basis_seconds"] == 167 * HOUR
    assert s["projected_monthly_cost_usd"] == round(0.06 * 30 * DAY / (167 * HOUR), 9)
    assert h.snap(8 * DAY).parts["cost"].live(2 * DAY + 10, frozenset())["total_usd"] == 0.09


def test_derived_request_batches_from_streams_are_priced() -> None:
    h = Harness()
    batch = Batch.derived(
        "request",
        2,
        model="gpt-4o",
        key_id="k_0123456789ab",
        duration_ms=np.array([10.0, 20.0]),
        input_tokens=np.array([100, 100], dtype=np.int64),
        output_tokens=np.array([50, 50], dtype=np.int64),
        streaming=True,
    )
    h.tracker.apply(batch, Ctx(1.0, WALL + 1, 1))
    assert h.summary()["by_key"] == {"k_0123456789ab": 0.0025}


def test_keys_beyond_the_cap_share_the_overflow_entry() -> None:
    h = Harness(max_keys=2)
    h.send([req("gpt-4o", 100, 50, api_key=f"sk-{i}") for i in range(4)])
    s = h.summary()
    assert s["by_key"] == {
        hash_key("sk-0"): 0.00125,
        hash_key("sk-1"): 0.00125,
        "__overflow__": 0.0025,
    }
    assert h.tracker.series_overflow() == 2
    assert s["total_cost_usd_str"] == "0.005"


def test_suggestions_per_key_on_a_timer_deduplicated() -> None:
    h = Harness()
    # FakeAI's bug: 99 records for x then 1 for y gave no suggestion for either.
    h.send([req("gpt-4", 1000, 500, api_key="x")] * 99, now=10.0)
    h.send(req("gpt-4", 1000, 500, api_key="y"), now=11.0)
    snap = h.snap(30.0)  # before the interval: nothing evaluated yet
    assert snap.parts["cost"].suggestions_view(None) == []
    snap = h.snap(61.0)
    found = snap.parts["cost"].suggestions_view(hash_key("x"))
    assert [s["suggestion_type"] for s in found] == ["cheaper_model", "batch_api"]
    cheaper = found[0]
    # 99 × ($0.06 at gpt-4 − $0.0125 at gpt-4o) over an hour's basis, × 30 d.
    assert cheaper["potential_savings_usd"] == pytest.approx(99 * 0.0475 * 720)
    assert cheaper["details"]["suggested_model"] == "gpt-4o"
    assert cheaper["details"]["models"][0]["requests"] == 99
    assert found[1]["potential_savings_usd"] == pytest.approx(99 * 0.06 * 0.5 * 720)
    assert snap.parts["cost"].suggestions_view(hash_key("y")) == []  # 1 request < min_requests
    h.send([req("gpt-4", 1000, 500, api_key="x")] * 10, now=100.0)
    snap = h.snap(125.0)
    found = snap.parts["cost"].suggestions_view(hash_key("x"))
    assert len(found) == 2  # replaced, not duplicated
    assert found[0]["details"]["models"][0]["requests"] == 109


def test_prompt_caching_suggestion() -> None:
    h = Harness(suggestion_interval=1.0)
    h.send([req("gpt-4o", 2000, 10, api_key="x", streaming=True)] * 20)
    snap = h.snap(5.0)
    by_type = {s["suggestion_type"]: s for s in snap.parts["cost"].suggestions_view(hash_key("x"))}
    assert set(by_type) == {"prompt_caching", "cheaper_model"}  # streamed: no batch_api
    found = by_type["prompt_caching"]
    # Half of 40 000 uncached prompt tokens at ($5 − $2.5) / 1M, an hour's basis, × 30 d.
    assert found["potential_savings_usd"] == pytest.approx(0.05 * 720)
    detail = found["details"]["models"][0]
    assert (detail["long_prompt_requests"], detail["cached_share"]) == (20, 0.0)


def test_mixed_rows_of_one_model_take_their_own_rule() -> None:
    h = Harness()
    h.send(
        [
            {"type": "usage", "model": "dall-e-3", "images": {"size": "1024x1024", "n": 2}},
            {"type": "usage", "model": "dall-e-3", "prompt_tokens": 5},  # no token price
            {"type": "usage", "model": "dall-e-3", "images": {}, "cost_usd": 1.5},  # given wins
        ]
    )
    s = h.summary()
    assert s["total_cost_usd_str"] == "1.58"
    assert s["unpriced_by_model"] == {"dall-e-3": 1}
    assert h.samples()[("llm_request_cost_usd_count", (("model", "dall-e-3"),))] == 2
