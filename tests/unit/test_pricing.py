"""The price table and what a session costs by it: list prices per response, as ccusage
applies them, and no figure at all rather than a wrong one."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from sessionflow.pricing import parse_table, price_table
from sessionflow.worker.parse import TokenTotals, parse_transcript

TABLE = Path(__file__).parents[2] / "sessionflow" / "pricing.json"


def response(
    model: str, *, message_id: str = "msg_1", speed: str | None = None, **counts: Any
) -> bytes:
    usage: dict[str, Any] = {
        "input_tokens": counts.get("input", 0),
        "output_tokens": counts.get("output", 0),
        "cache_creation_input_tokens": counts.get("write", 0),
        "cache_read_input_tokens": counts.get("read", 0),
    }
    if "one_hour" in counts:
        usage["cache_creation"] = {
            "ephemeral_5m_input_tokens": counts.get("write", 0) - counts["one_hour"],
            "ephemeral_1h_input_tokens": counts["one_hour"],
        }
    if speed is not None:
        usage["speed"] = speed
    event = {
        "type": "assistant",
        "sessionId": "s-1",
        "requestId": f"req_{message_id}",
        "timestamp": "2025-11-03T10:00:00.000Z",
        "message": {"id": message_id, "model": model, "content": [], "usage": usage},
    }
    return json.dumps(event, separators=(",", ":")).encode()


# --- the table -------------------------------------------------------------------------------


def test_the_shipped_table_loads_once_with_its_date() -> None:
    table = price_table()
    assert table is price_table()
    assert table.taken == date.fromisoformat(json.loads(TABLE.read_text())["taken"])
    assert table.threshold == 200_000


def test_every_price_keeps_anthropics_cache_multiples_of_the_input_rate() -> None:
    # 5-minute writes 1.25x, 1-hour writes 2x, reads 0.1x: a typo in the table shows here.
    # (Claude 3 Haiku's published figures are rounded: $0.30 writes and $0.03 reads on $0.25.)
    for price in price_table().prices.values():
        rounded = price.model == "claude-3-haiku"
        for rates in (price.base, price.above):
            if rates is None:
                continue
            assert rates.cache_write_1h == pytest.approx(2 * rates.input), price.model
            if not rounded:
                assert rates.cache_write_5m == pytest.approx(1.25 * rates.input), price.model
                assert rates.cache_read == pytest.approx(0.1 * rates.input), price.model


@pytest.mark.parametrize(
    ("model", "family"),
    [
        ("claude-3-haiku-20240307", "claude-3-haiku"),
        ("claude-3-5-haiku-20241022", "claude-3-5-haiku"),
        ("claude-3-5-sonnet-20241022", "claude-3-5-sonnet"),
        ("claude-3-7-sonnet-20250219", "claude-3-7-sonnet"),
        ("claude-sonnet-4-20250514", "claude-sonnet-4"),
        ("claude-sonnet-4-0", "claude-sonnet-4"),
        ("claude-sonnet-4-5-20250929", "claude-sonnet-4-5"),
        ("claude-sonnet-4-6", "claude-sonnet-4-6"),
        ("claude-opus-4-20250514", "claude-opus-4"),
        ("claude-opus-4-1-20250805", "claude-opus-4-1"),
        ("claude-opus-4-5-20251101", "claude-opus-4-5"),
        ("claude-opus-4-6", "claude-opus-4-6"),
        ("claude-haiku-4-5-20251001", "claude-haiku-4-5"),
        ("claude-3-5-haiku@20241022", "claude-3-5-haiku"),
    ],
)
def test_dated_ids_resolve_to_their_family(model: str, family: str) -> None:
    price = price_table().find(model)
    assert price is not None
    assert price.model == family


@pytest.mark.parametrize(
    "model", ["claude-sonnet-4-7", "claude-opus-4-6-fast", "gpt-5", "claude", "<synthetic>"]
)
def test_a_model_the_table_does_not_name_has_no_price(model: str) -> None:
    assert price_table().find(model) is None


def test_published_list_prices_per_million_tokens() -> None:
    sonnet = price_table().find("claude-sonnet-4-5")
    assert sonnet is not None
    tenth = 100_000  # a tenth of a million, below the long-context threshold
    zero = {"input": 0, "output": 0, "cache_write_5m": 0, "cache_write_1h": 0, "cache_read": 0}
    rates = {
        "input": 3,
        "output": 15,
        "cache_write_5m": 3.75,
        "cache_write_1h": 6,
        "cache_read": 0.3,
    }
    for kind, per_million in rates.items():
        assert sonnet.cost(**{**zero, kind: tenth}) == pytest.approx(per_million / 10), kind


def test_tokens_past_200k_in_one_response_cost_the_long_context_rate() -> None:
    sonnet = price_table().find("claude-sonnet-4-20250514")
    assert sonnet is not None
    cost = sonnet.cost(input=300_000, output=0, cache_write_5m=0, cache_write_1h=0, cache_read=0)
    assert cost == pytest.approx(0.2 * 3 + 0.1 * 6)
    # A model without a long-context tier charges every token at its base rate.
    flat = price_table().find("claude-sonnet-4-6")
    assert flat is not None
    cost = flat.cost(input=300_000, output=0, cache_write_5m=0, cache_write_1h=0, cache_read=0)
    assert cost == pytest.approx(0.3 * 3)


def test_fast_mode_costs_its_multiple_or_nothing_known() -> None:
    opus = price_table().find("claude-opus-4-6")
    haiku = price_table().find("claude-haiku-4-5")
    assert opus is not None and haiku is not None
    kwargs = {"input": 1_000_000, "output": 0, "cache_write_5m": 0, "cache_write_1h": 0}
    assert opus.cost(**kwargs, cache_read=0, fast=True) == pytest.approx(6 * 5.0)
    assert haiku.cost(**kwargs, cache_read=0, fast=True) is None


def test_the_table_prices_token_totals() -> None:
    usage = TokenTotals(input=1_000, output=1_000, cache_read=10_000, cache_creation=4_000)
    cost = price_table().cost("claude-haiku-4-5-20251001", usage)
    assert cost == pytest.approx((1_000 * 1 + 1_000 * 5 + 10_000 * 0.1 + 4_000 * 1.25) / 1e6)
    assert price_table().cost("claude-unknown-9", usage) is None


@pytest.mark.parametrize(
    "broken",
    [
        {"models": {}},  # no date, no threshold
        {
            "taken": "2026-01-01",
            "source": "x",
            "long_context_threshold_tokens": 200000,
            "models": {"m": {"input": 1}},
        },
        {
            "taken": "2026-01-01",
            "source": "x",
            "long_context_threshold_tokens": 200000,
            "models": {
                "m": {
                    "input": -1,
                    "output": 1,
                    "cache_write_5m": 1,
                    "cache_write_1h": 1,
                    "cache_read": 1,
                }
            },
        },
    ],
)
def test_a_malformed_table_is_refused(broken: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"malformed|negative"):
        parse_table(broken)


# --- what a session costs ----------------------------------------------------------------------


def test_session_cost_of_a_known_model() -> None:
    result = parse_transcript(
        [response("claude-opus-4-5-20251101", input=10, output=100, write=2_000, read=50_000)]
    )
    assert result.cost_usd == pytest.approx((10 * 5 + 100 * 25 + 2_000 * 6.25 + 50_000 * 0.5) / 1e6)
    assert result.unpriced_models == []
    assert result.pricing_date == price_table().taken


def test_one_hour_cache_writes_cost_twice_the_input_rate() -> None:
    result = parse_transcript([response("claude-sonnet-4-5-20250929", write=3_000, one_hour=2_000)])
    assert result.tokens.cache_creation == 3_000
    assert result.cost_usd == pytest.approx((1_000 * 3.75 + 2_000 * 6.0) / 1e6)


def test_the_long_context_tier_applies_per_response_not_to_the_session_sum() -> None:
    small = [
        response("claude-sonnet-4-20250514", message_id=f"m{i}", read=150_000) for i in range(3)
    ]
    big = response("claude-sonnet-4-20250514", message_id="big", read=250_000)
    result = parse_transcript([*small, big])
    expected = 3 * 150_000 * 0.3 + 200_000 * 0.3 + 50_000 * 0.6
    assert result.cost_usd == pytest.approx(expected / 1e6)


def test_an_unknown_model_leaves_the_cost_unknown_and_names_the_model() -> None:
    result = parse_transcript(
        [
            response("claude-sonnet-4-5-20250929", message_id="a", input=100, output=100),
            response("claude-sonnet-9-20300101", message_id="b", input=100, output=100),
        ]
    )
    assert result.cost_usd is None
    assert result.unpriced_models == ["claude-sonnet-9-20300101"]
    assert result.tokens.input == 200


def test_synthetic_messages_are_not_a_model_and_cost_nothing() -> None:
    result = parse_transcript(
        [
            response("claude-haiku-4-5-20251001", message_id="a", input=1_000),
            response("<synthetic>", message_id="b"),
        ]
    )
    assert result.models == ["claude-haiku-4-5-20251001"]
    assert result.cost_usd == pytest.approx(1_000 * 1.0 / 1e6)
    assert result.unpriced_models == []


def test_fast_mode_without_a_fast_price_is_unpriced() -> None:
    result = parse_transcript([response("claude-haiku-4-5-20251001", input=10, speed="fast")])
    assert result.cost_usd is None
    assert result.unpriced_models == ["claude-haiku-4-5-20251001-fast"]


def test_a_cost_written_on_the_line_by_old_versions_is_used_as_is() -> None:
    line = json.loads(response("claude-unknown-1", input=1_000))
    line["costUSD"] = 0.25
    result = parse_transcript([json.dumps(line, separators=(",", ":")).encode()])
    assert result.cost_usd == pytest.approx(0.25)
