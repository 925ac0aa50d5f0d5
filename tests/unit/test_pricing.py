"""The price table: exact units, the built-in table, merging user tables, validation, the CLI."""

from __future__ import annotations

import json
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

import pytest
from click.testing import CliRunner

from metricsd.cli import main
from metricsd.config import ConfigError, CostConfig, load_config
from metricsd.pricing import PricingError, load_pricing, to_pico, usd, usd_str
from metricsd.protocol import hash_key


def test_money_helpers_are_exact() -> None:
    assert to_pico(0.1) == 100_000_000_000
    assert to_pico("0.00125") == 1_250_000_000
    assert to_pico(Decimal("1e-12")) == 1
    assert usd_str(1_250_000_000) == "0.00125"
    assert usd_str(0) == "0"
    assert usd_str(3 * 10**12) == "3"
    assert usd_str(-1) == "-0.000000000001"
    assert usd_str(10**30 + 1) == "1000000000000000000.000000000001"
    assert usd(1_250_000_000) == 0.00125
    assert usd(1_499) == 1e-9  # rounded to 1e-9, half to even
    assert usd(1_500) == 2e-9 and usd(2_500) == 2e-9


def test_builtin_table() -> None:
    table = load_pricing()
    assert table.updated == "2026-11-23"
    assert table.batch_discount == Fraction(1, 2)
    gpt4o = table.models["gpt-4o"]
    # pUSD per token == USD per 1M tokens × 1e6.
    assert (gpt4o.input, gpt4o.output, gpt4o.cached) == (5_000_000, 15_000_000, 2_500_000)
    assert table.models["gpt-4o-mini"].cached == 75_000
    res = table.resolve("gpt-4o-2024-05-13")
    assert res is not None and (res.kind, res.name) == ("text", "gpt-4o")
    ft = table.resolve("ft:gpt-4o-2024-08-06:my-org::abc123")
    assert ft is not None and ft.kind == "fine_tuning" and ft.tokens is not None
    assert (ft.tokens.input, ft.tokens.output, ft.tokens.training) == (
        3_750_000,
        15 * 10**6,
        25 * 10**6,
    )
    assert table.resolve("ft:unknown-base:org::x") is None
    assert table.resolve("mystery-model") is None
    audio = table.resolve("tts-1")
    assert audio is not None and audio.kind == "audio" and audio.per_character == 15_000_000
    assert table.image_price("dall-e-3", "1024x1792", "hd") == to_pico("0.12")
    assert table.image_price("dall-e-3", "1024x1024", "ultra") is None
    assert table.input_includes_cached("openai") is True
    assert table.input_includes_cached("anthropic") is False
    assert table.input_includes_cached("somebody-else") is True
    assert table.alternatives["gpt-4"] == "gpt-4o"


def test_user_tables_merge_over_the_builtin(tmp_path: Path) -> None:
    path = tmp_path / "prices.toml"
    path.write_text(
        'updated = "2030-01-02"\n'
        '[models."gpt-4o"]\ninput = 2.5\noutput = 10\n'  # replaces the entry whole
        '[models."my-model"]\ninput = 1\noutput = 2\ncached = 0.5\n'
        '[aliases]\n"my-alias" = "my-model"\n'
    )
    config = load_config(
        environ={},
        overrides={
            "cost": {
                "pricing_file": str(path),
                "prices": {"batch_discount": 0.25, "audio": {"my-voice": 1.5}},
            }
        },
    )
    table = load_pricing(config.cost)
    assert table.updated == "2030-01-02"
    assert table.sources == ("built-in", str(path), "cost.prices")
    assert table.models["gpt-4o"].cached is None  # whole-entry replacement
    assert table.models["gpt-4o"].input == 2_500_000
    assert table.resolve("gpt-4o-2024-05-13") is not None  # built-in alias still points to it
    res = table.resolve("my-alias")
    assert res is not None and res.name == "my-model"
    assert table.batch_discount == Fraction(1, 4)
    assert table.audio["my-voice"] == 1_500_000
    assert table.models["gpt-4"].input == 30_000_000  # untouched entries stay


def test_replace_drops_the_builtin_entries() -> None:
    config = load_config(
        environ={},
        overrides={
            "cost": {"prices": {"replace": True, "models": {"m": {"input": 1, "output": 1}}}}
        },
    )
    table = load_pricing(config.cost)
    assert list(table.models) == ["m"] and not table.images and not table.aliases


def test_inline_prices_from_the_environment() -> None:
    env = {"METRICSD_COST_PRICES": json.dumps({"models": {"x": {"input": 1, "output": 2}}})}
    table = load_pricing(load_config(environ=env).cost)
    assert table.models["x"].output == 2_000_000


@pytest.mark.parametrize(
    "prices,message",
    [
        ({"models": {"m": {"input": 0.0000001, "output": 1}}}, "more than 6 decimal places"),
        ({"models": {"m": {"input": -1, "output": 1}}}, "must be a finite number ≥ 0"),
        ({"models": {"m": {"input": 1}}}, "output is required"),
        ({"models": {"m": {"input": 1, "output": 1, "cahced": 1}}}, "cahced: unknown key"),
        ({"models": {"m": {"input": "abc", "output": 1}}}, "expected a number"),
        ({"images": {"d": {"1x1": {"hd": 1e-13}}}}, "more than 12 decimal places"),
        ({"batch_discount": 2}, "between 0 and 1"),
        ({"currency": "EUR"}, "only USD"),
        ({"modles": {}}, "modles: unknown key"),
        ({"aliases": {"a": 3}}, "expected a model name"),
        ({"input_includes_cached": {"openai": "yes"}}, "expected a boolean"),
    ],
)
def test_bad_prices_are_config_errors(prices: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(environ={}, overrides={"cost": {"prices": prices}})


def test_missing_pricing_file() -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_config(environ={}, overrides={"cost": {"pricing_file": "/nonexistent/p.toml"}})
    with pytest.raises(PricingError, match="no such file"):
        load_pricing(CostConfig(pricing_file="/nonexistent/p.toml"))


def test_cost_config_checks(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cost\.timezone"):
        load_config(environ={}, overrides={"cost": {"timezone": "Mars/Olympus"}})
    with pytest.raises(ConfigError, match=r"cost\.webhook_url"):
        load_config(environ={}, overrides={"cost": {"webhook_url": "ftp://x"}})
    with pytest.raises(ConfigError, match=r"cost.budgets\[0\].limit_usd"):
        load_config(environ={}, overrides={"cost": {"budgets": [{"key": "*"}]}})
    with pytest.raises(ConfigError, match=r"cost.budgets\[0\]: period must be one of"):
        load_config(
            environ={},
            overrides={"cost": {"budgets": [{"key": "*", "limit_usd": 1, "period": "x"}]}},
        )
    with pytest.raises(ConfigError, match=r"cost.budgets\[1\].key: a second budget"):
        load_config(
            environ={},
            overrides={"cost": {"budgets": [{"key": "*", "limit_usd": 1}] * 2}},
        )
    with pytest.raises(ConfigError, match=r"cost.budgets\[0\].bogus: unknown key"):
        load_config(environ={}, overrides={"cost": {"budgets": [{"key": "*", "bogus": 1}]}})


def test_budget_keys_in_config_are_hashed(tmp_path: Path) -> None:
    path = tmp_path / "m.toml"
    path.write_text(
        '[cost]\ntimezone = "Europe/Paris"\n'
        '[[cost.budgets]]\nkey = "sk-secret-raw-key"\nlimit_usd = 10\nlimit_type = "hard"\n'
        '[[cost.budgets]]\nkey = "*"\nlimit_usd = 100\nperiod = "daily"\n'
    )
    config = load_config(path, environ={})
    keys = [b.key for b in config.cost.budgets]
    assert keys == [hash_key("sk-secret-raw-key"), "*"]
    result = CliRunner().invoke(main, ["check-config", str(path)])
    assert result.exit_code == 0, result.output
    assert "sk-secret-raw-key" not in result.output
    assert hash_key("sk-secret-raw-key") in result.output


def test_pricing_command(tmp_path: Path) -> None:
    path = tmp_path / "m.toml"
    path.write_text('[cost.prices.models."my-model"]\ninput = 1.25\noutput = 2\n')
    result = CliRunner().invoke(main, ["pricing", "--config", str(path)])
    assert result.exit_code == 0, result.output
    assert "price table updated 2026-11-23" in result.output
    assert "my-model" in result.output and "1.25" in result.output
    result = CliRunner().invoke(main, ["pricing", "--json"])
    data = json.loads(result.output)
    assert data["models"]["gpt-4o-mini"] == {"input": "0.15", "output": "0.6", "cached": "0.075"}
    assert data["images"]["dall-e-3"]["1024x1792/hd"] == "0.12"
    assert data["batch_discount"] == "0.5"
    bad = tmp_path / "bad.toml"
    bad.write_text('[cost.prices.models."m"]\ninput = 1\n')
    result = CliRunner().invoke(main, ["pricing", "--config", str(bad)])
    assert result.exit_code == 2 and "output is required" in result.output
