"""A job's worst case, item by item, and the affordable part of it; job windows and ids."""

from __future__ import annotations

import pytest

from services.batch.input import Request
from services.batch.plan import (
    affordable,
    check_job_id,
    declared_worst,
    estimate,
    item_token,
    micro,
    output_file_id,
    window_seconds,
)
from shared.errors import InvalidRequestError
from shared.route_pricing import RoutePricing, TokenRates
from shared.schemas.openai import chat_from_builtins, decode_embeddings

# $1 per output token, $0.5 per input token, two deployments: the dearer one prices the worst case
PRICING = RoutePricing(model="m", rates=(TokenRates(0.5, 1.0), TokenRates(0.1, 0.2)), max_output=100)


def chat(max_tokens: int | None = None, text: str = "abcd efgh") -> Request:
    body: dict[str, object] = {"model": "m", "messages": [{"role": "user", "content": text}]}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    return Request(model="m", canonical="m", chat=chat_from_builtins(body))


def test_an_item_costs_its_prompt_and_the_most_output_it_may_have() -> None:
    # prompt: 4 tokens of overhead + 9 characters (3 tokens) = 7 tokens
    assert estimate(chat(10), PRICING).cost() == pytest.approx(7 * 0.5 + 10 * 1.0)
    assert estimate(chat(), PRICING).output_tokens == 100  # the model's most
    assert estimate(chat(), PRICING, cap=20).output_tokens == 20  # a declared job's cap
    assert estimate(chat(500), PRICING).output_tokens == 100
    emb = Request(model="m", canonical="m", embeddings=decode_embeddings(b'{"model":"m","input":"abcdefgh"}'))
    assert estimate(emb, PRICING).cost() == pytest.approx(2 * 0.5)


def test_a_declared_job_costs_its_prompt_and_max_tokens_per_item() -> None:
    assert declared_worst(PRICING, items=3, input_tokens=30, max_tokens=10) == micro(30 * 0.5 + 30 * 1.0)
    assert micro(0.0000011) == 2  # rounded up


def test_the_affordable_part_is_the_leading_items_that_fit() -> None:
    assert affordable([10, 10, 10], 30) == 3
    assert affordable([10, 10, 10], 29) == 2
    assert affordable([10, 5, 20], 16) == 2
    assert affordable([50], 10) == 0
    assert affordable([], 0) == 0


def test_completion_windows() -> None:
    assert window_seconds("24h", 7 * 86400) == 86400
    assert window_seconds("90m", 86400) == 5400
    assert window_seconds(" 2s ", 10) == 2
    for bad in ("24", "1y", "-1h", "0h", "8d"):
        with pytest.raises(InvalidRequestError):
            window_seconds(bad, 7 * 86400)


def test_ids() -> None:
    assert item_token("batch_1", "a") == item_token("batch_1", "a") != item_token("batch_2", "a")
    assert len(item_token("j", "i")) == 32 and item_token("j", "i").isalnum()
    assert output_file_id("j", "o").startswith("file-") and output_file_id("j", "o") != output_file_id("j", "e")
    assert check_job_id("nightly-2026_12") == "nightly-2026_12"
    for bad in ("a.b", "a b", "x" * 65, ""):
        with pytest.raises(InvalidRequestError):
            check_job_id(bad)
