"""Accounting's pure core: an event becomes a row lined up with its columns, priced honestly."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec
import pytest

from services.accounting.core import (
    COLUMNS,
    GUARD_COLUMNS,
    GUARD_VERDICTS,
    REQUEST_COLUMNS,
    REQUESTS,
    BadEvent,
    event_row,
    guard_row,
    price,
    request_row,
    sql_string_list,
)
from shared.errors import RateLimitError
from shared.pricing import MAX_UNIX_S, clamp_unix
from shared.schemas.chat import Attempt, Caller, GuardFinding, Usage
from shared.schemas.events import GuardEvent, RequestEvent
from shared.subjects import Subjects, encode


def event(**kw: object) -> RequestEvent:
    base: dict[str, object] = {
        "event_id": "e1",
        "request_id": "r1",
        "api": "chat",
        "caller": Caller(key_id="k", team="t", project="p", user="u"),
        "requested_model": "gpt-4o-mini",
        "provider": "openai",
        "provider_model": "gpt-4o-mini",
        "status": 200,
        "usage": Usage(input_tokens=1000, output_tokens=100),
        "received_at": 1_700_000_000.0,
        "finished_at": 1_700_000_001.5,
        "latency_ms": 1500.0,
    }
    base.update(kw)
    return RequestEvent(**base)  # type: ignore[arg-type]


def as_dict(ev: RequestEvent, kind: str = "openai") -> dict[str, object]:
    return dict(zip(REQUEST_COLUMNS, request_row(ev, kind), strict=True))


def test_request_row_lines_up_with_the_columns() -> None:
    e = event(
        trace_id="tr",
        batch_id="b",
        attempts=[
            Attempt(
                provider="a",
                deployment="a/m",
                status=429,
                latency_ms=3,
                error_code="rate_limit_exceeded",
                error_message="slow down",
            ),
            Attempt(provider="b", deployment="b/m", status=200, latency_ms=9),
        ],
        guard_action="redact",
        guard_policy="strict",
        guard_findings=[GuardFinding(scanner="secrets", rule="openai-key", action="redact", start=3, end=40)],
        tags={"feature": "search"},
        stream=True,
        ttft_ms=12.0,
        request_bytes=300,
        guard_replica="guard-1",
        router_replica="router-0",
    )
    row = as_dict(e)
    assert (row["guard_replica"], row["router_replica"]) == ("guard-1", "router-0")
    assert (row["event_id"], row["request_id"], row["trace_id"], row["batch_id"]) == ("e1", "r1", "tr", "b")
    assert (row["key_id"], row["team"], row["project"], row["user"]) == ("k", "t", "p", "u")
    assert row["attempts.provider"] == ["a", "b"] and row["attempts.status"] == [429, 200]
    assert row["attempts.error_code"] == ["rate_limit_exceeded", ""]
    assert row["attempts.error_message"] == ["slow down", ""]
    assert row["guard_findings.rule"] == ["openai-key"] and row["guard_findings.end"] == [40]
    assert row["guard_action"] == "redact" and row["guard_policy"] == "strict"
    assert row["tags"] == {"feature": "search"} and row["stream"] is True and row["request_bytes"] == 300
    # times as unix seconds (DateTime64(3) reads a JSON number with its fraction)
    assert row["received_at"] == datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC).timestamp()
    assert row["error_type"] == "" and row["input_tokens"] == 1000 and row["reserved_cost_usd"] is None
    # gpt-4o-mini: $0.15 / MTok in, $0.60 / MTok out; what is settled is the list price
    assert row["cost_usd"] == pytest.approx(1000 * 0.15e-6 + 100 * 0.6e-6)
    assert row["settled_cost_usd"] == row["cost_usd"]
    assert row["price_version"] == f"{price(e, 'openai').version}"
    assert str(row["price_version"]).startswith("genai-prices ") and "openai/gpt-4o-mini" in str(row["price_version"])


def test_errors_keep_their_taxonomy_and_no_usage_means_no_price() -> None:
    row = as_dict(event(status=429, usage=None, error=RateLimitError("slow").info()))
    assert (row["status"], row["error_type"], row["error_code"]) == (429, "rate_limit_error", "rate_limit_exceeded")
    assert row["error_message"] == "slow"
    assert row["cost_usd"] is None and row["price_version"] == "no usage reported"
    assert row["input_tokens"] == 0 and row["output_tokens"] == 0


def test_unknown_models_are_unpriced_not_guessed() -> None:
    unknown = price(event(provider_model="no-such-model-xyz", requested_model="alias"), "openai")
    assert unknown.cost_usd is None and "unknown model" in unknown.version
    assert price(event(), "mock") == price(event(usage=None), "mock")
    assert price(event(), "mock").cost_usd == 0.0
    assert price(event(usage=Usage()), "openai").cost_usd == 0.0


def test_cached_input_is_priced_at_the_cache_rate() -> None:
    full = price(event(usage=Usage(input_tokens=1000, output_tokens=0)), "openai").cost_usd
    cached = price(event(usage=Usage(input_tokens=1000, output_tokens=0, cached_tokens=800)), "openai").cost_usd
    assert full is not None and cached is not None and cached < full
    assert cached == pytest.approx(200 * 0.15e-6 + 800 * 0.075e-6)
    # a provider reporting more cached than total input does not make the price negative or crash it
    odd = price(event(usage=Usage(input_tokens=10, output_tokens=0, cached_tokens=50)), "openai").cost_usd
    assert odd is not None and odd >= 0


def test_cache_writes_and_reads_are_priced_at_their_own_rates() -> None:
    # claude-sonnet-4-5: $3 / MTok in, $3.75 cache write (5 min), $0.30 cache read, $15 out. An Anthropic
    # answer with input_tokens=100, cache_creation_input_tokens=600, cache_read_input_tokens=300 is, in
    # gatehouse's convention, 1000 input tokens of which 300 cached and 600 written.
    claude = {"provider_model": "claude-sonnet-4-5", "requested_model": "claude"}
    usage = Usage(input_tokens=1000, output_tokens=10, cached_tokens=300, cache_write_tokens=600)
    cost = price(event(usage=usage, **claude), "anthropic").cost_usd
    assert cost == pytest.approx(100 * 3e-6 + 600 * 3.75e-6 + 300 * 0.3e-6 + 10 * 15e-6)
    plain = price(event(usage=Usage(input_tokens=1000, output_tokens=10), **claude), "anthropic").cost_usd
    assert plain == pytest.approx(1000 * 3e-6 + 10 * 15e-6) and cost != plain
    # more written than the input left after the reads cannot make the price odd
    odd = Usage(input_tokens=100, output_tokens=0, cached_tokens=80, cache_write_tokens=500)
    assert price(event(usage=odd, **claude), "anthropic").cost_usd == pytest.approx(20 * 3.75e-6 + 80 * 0.3e-6)
    row = as_dict(event(usage=usage, **claude), "anthropic")
    assert (row["input_tokens"], row["cached_tokens"], row["cache_write_tokens"]) == (1000, 300, 600)
    # writes that live an hour cost $6 / MTok; a web search $10 / 1000
    hour = Usage(
        input_tokens=1000, output_tokens=10, cached_tokens=300, cache_write_tokens=600, cache_write_1h_tokens=400
    )
    cost_1h = price(event(usage=hour, **claude), "anthropic").cost_usd
    assert cost_1h == pytest.approx(100 * 3e-6 + 200 * 3.75e-6 + 400 * 6e-6 + 300 * 0.3e-6 + 10 * 15e-6)
    searched = msgspec.structs.replace(usage, web_search_requests=2)
    cost_search = price(event(usage=searched, **claude), "anthropic").cost_usd
    assert cost_search == pytest.approx(cost + 2 * 0.01)
    row = as_dict(event(usage=msgspec.structs.replace(hour, web_search_requests=2), **claude), "anthropic")
    assert (row["cache_write_1h_tokens"], row["web_search_requests"]) == (400, 2)


def test_provider_kinds_map_to_the_price_list() -> None:
    gemini = price(event(provider_model="gemini-2.0-flash", requested_model="flash"), "gemini")
    assert gemini.cost_usd and "google/" in gemini.version


def test_out_of_range_values_are_clamped_so_the_record_is_still_stored() -> None:
    row = as_dict(
        event(
            status=70_000,
            usage=Usage(input_tokens=-5, output_tokens=2**40),
            received_at=float("nan"),
            finished_at=1e13,
            response_bytes=-1,
        )
    )
    assert row["status"] == 65_535 and row["input_tokens"] == 0 and row["output_tokens"] == 2**32 - 1
    assert row["received_at"] == 0.0
    assert datetime.fromtimestamp(row["finished_at"], tz=UTC) == datetime(2199, 12, 31, 23, 59, 59, tzinfo=UTC)  # type: ignore[arg-type]
    assert row["response_bytes"] == 0


def test_guard_row_lines_up_and_carries_no_text() -> None:
    g = GuardEvent(
        event_id="g",
        request_id="r",
        policy="p",
        action="block",
        direction="output",
        at=1.0,
        scan_us=120,
        findings=[GuardFinding(scanner="s", rule="r1", action="block", start=1, end=2, location="messages[1].content")],
    )
    row = dict(zip(GUARD_COLUMNS, guard_row(g), strict=True))
    assert row["findings.rule"] == ["r1"] and row["action"] == "block" and row["direction"] == "output"
    assert row["findings.location"] == ["messages[1].content"] and row["scan_us"] == 120


def test_event_row_picks_the_table_by_subject_and_refuses_what_it_cannot_store() -> None:
    subjects = Subjects("px")
    table, row, _ = event_row(subjects, "px.events.request", encode(event()), {"openai": "openai"})
    assert table == REQUESTS and len(row) == len(COLUMNS[REQUESTS])
    verdict = GuardEvent(event_id="g", request_id="r", policy="p", action="flag", at=2.0)
    table, row, _ = event_row(subjects, "px.events.guard", encode(verdict), {})
    assert table == GUARD_VERDICTS and row[0] == "g"
    # the provider name is looked up in the config to know its price list
    _, priced, _ = event_row(subjects, "px.events.request", encode(event(provider="main")), {"main": "mock"})
    assert priced[REQUEST_COLUMNS.index("price_version")] == "mock"
    with pytest.raises(BadEvent, match="undecodable"):
        event_row(subjects, "px.events.request", b"\x93garbage", {})
    with pytest.raises(BadEvent, match="undecodable"):
        event_row(subjects, "px.events.request", msgspec.msgpack.encode({"event_id": "x"}), {})
    with pytest.raises(BadEvent, match="no table"):
        event_row(subjects, "px.events.other", encode(event()), {})


def test_event_ids_are_escaped_in_lookups() -> None:
    assert sql_string_list(["a", "b'c", "d\\e"]) == "'a', 'b\\'c', 'd\\\\e'"


@pytest.mark.parametrize(
    ("unix", "stored"),
    [
        (1_700_000_000.25, 1_700_000_000.25),
        (-5.0, 0.0),
        (float("-inf"), 0.0),
        (float("inf"), 0.0),
        (float("nan"), 0.0),
        (1e13, MAX_UNIX_S),
    ],
)
def test_times_are_stored_as_unix_seconds_within_what_datetime64_holds(unix: float, stored: float) -> None:
    assert as_dict(event(received_at=unix))["received_at"] == stored
    assert clamp_unix(unix) == stored
