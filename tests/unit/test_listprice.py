"""The fast list-price path gives exactly what genai-prices' calc_price gives, for every model in the installed
snapshot and a spread of usages (plain, cached, cache writes of both lifetimes, web searches, long prompts that
reach a tier)."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from genai_prices import Usage, calc_price, data_snapshot

from services.accounting.listprice import ListPrices, Plan

USAGES = [
    {"input_tokens": 1000, "output_tokens": 200},
    {"input_tokens": 1, "output_tokens": 0},
    {"input_tokens": 0, "output_tokens": 5},
    {"input_tokens": 5000, "output_tokens": 700, "cache_read_tokens": 4000},
    {"input_tokens": 5000, "output_tokens": 700, "cache_read_tokens": 1000, "cache_write_tokens": 3000},
    {"input_tokens": 9000, "output_tokens": 10, "cache_write_tokens": 8000, "cache_write_1h_tokens": 5000},
    {"input_tokens": 300_000, "output_tokens": 4000, "cache_read_tokens": 100_000},  # past 128k/200k tiers
    {"input_tokens": 2000, "output_tokens": 300, "web_searches": 3},
]
WHEN = [datetime(2025, 3, 1, tzinfo=UTC), datetime(2026, 11, 30, tzinfo=UTC)]
# one for both dates: a plan cached at the first must still be right at the second (prices that change over time)
SHARED = ListPrices()


def _models() -> list[tuple[str, str]]:
    return [(p.id, m.id) for p in data_snapshot.get_snapshot().providers for m in p.models]


def test_the_snapshot_has_models_to_check() -> None:
    assert len(_models()) > 500


@pytest.mark.parametrize("when", WHEN)
def test_every_model_prices_as_genai_prices_does(when: datetime) -> None:
    prices = SHARED
    checked = fallbacks = 0
    for provider_id, model_id in _models():
        found = prices.model(model_id, provider_id)
        if found is None:  # an id its own matcher does not take: calc_price cannot find it either
            with pytest.raises(LookupError):
                calc_price(Usage(input_tokens=1), model_ref=model_id, provider_id=provider_id)
            continue
        _, info = found
        plan = prices.plan_at(info, when.timestamp())  # the path accounting prices every event by
        for counts in USAGES:
            fast = plan.total(counts)
            try:
                slow = calc_price(
                    Usage(**{k: v or None for k, v in counts.items()}),  # type: ignore[arg-type]
                    model_ref=model_id,
                    provider_id=provider_id,
                    genai_request_timestamp=when,
                ).total_price
            except (ValueError, ArithmeticError):
                slow = None
            if fast is None:
                fallbacks += 1  # the caller asks calc_price then
                continue
            assert slow is not None, (provider_id, model_id, counts)
            assert Decimal(fast) == Decimal(slow), (provider_id, model_id, counts, fast, slow)
            checked += 1
    assert checked > 1000 and fallbacks < checked / 10


def test_a_plan_is_resolved_once_per_price() -> None:
    prices = ListPrices()
    found = prices.model("gpt-4o-mini", "openai")
    assert found is not None
    plan = prices.plan(found[1], WHEN[1])
    assert prices.plan(found[1], WHEN[1]) is plan and isinstance(plan, Plan)
    assert prices.model("no-such-model-anywhere", "openai") is None


def test_a_model_whose_price_never_changes_has_one_plan_for_all_times() -> None:
    prices = ListPrices()
    found = prices.model("gpt-4o-mini", "openai")
    assert found is not None
    plan = prices.plan_at(found[1], WHEN[0].timestamp())
    assert prices.plan_at(found[1], WHEN[1].timestamp()) is plan
    assert prices.plan_at(found[1], float("nan")) is plan
