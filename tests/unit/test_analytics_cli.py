"""The analytics commands' pure parts: periods, dates, CSV and JSON output, the bar chart and a request's story."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
import typer
from rich.console import Console

from gatehouse.analytics_cli import chart, emit, moment, period, render_story, time_range


def test_named_periods_are_calendar_periods_in_utc() -> None:
    now = datetime(2026, 3, 4, 15, 30, tzinfo=UTC)  # a Wednesday
    assert period("today", now) == (datetime(2026, 3, 4, tzinfo=UTC), datetime(2026, 3, 5, tzinfo=UTC))
    assert period("last-week", now) == (datetime(2026, 2, 23, tzinfo=UTC), datetime(2026, 3, 2, tzinfo=UTC))
    assert period("this-month", now) == (datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 4, 1, tzinfo=UTC))
    assert period("last-month", now) == (datetime(2026, 2, 1, tzinfo=UTC), datetime(2026, 3, 1, tzinfo=UTC))
    with pytest.raises(typer.BadParameter):
        period("fortnight", now)


def test_dates_times_and_ranges() -> None:
    assert moment("2026-11-01") == datetime(2026, 11, 1, tzinfo=UTC).timestamp()
    assert moment("2026-11-01T12:00+02:00") == datetime(2026, 11, 1, 10, tzinfo=UTC).timestamp()
    assert moment("1700000000") == 1_700_000_000
    with pytest.raises(typer.BadParameter):
        moment("last tuesday")
    begin, end = time_range(None, "2026-11-01", "2026-12-01", None, "30d")
    assert (begin, end) == (moment("2026-11-01"), moment("2026-12-01"))
    with pytest.raises(typer.BadParameter):
        time_range("7d", "2026-11-01", None, None, "30d")
    with pytest.raises(typer.BadParameter):
        time_range(None, "2026-12-01", "2026-11-01", None, "30d")


def test_csv_and_json_output(capsys: pytest.CaptureFixture[str]) -> None:
    columns = ["team", "requests", "cost_usd"]
    rows: list[list[object]] = [["ml", 3, 1.5], ["a,b", 1, None]]
    emit(columns, rows, "csv")
    assert capsys.readouterr().out == 'team,requests,cost_usd\nml,3,1.5\n"a,b",1,\n'
    emit(columns, rows, "json")
    assert json.loads(capsys.readouterr().out) == [
        {"team": "ml", "requests": 3, "cost_usd": 1.5},
        {"team": "a,b", "requests": 1, "cost_usd": None},
    ]


def test_the_chart_draws_one_bar_per_group_scaled_to_the_largest() -> None:
    console = Console(width=100, record=True, color_system=None)
    console.print(chart(["team", "cost_usd"], [["ml", 2.0], ["search", 1.0]], "cost_usd", ["team"], width=20))
    lines = [line for line in console.export_text().splitlines() if "$" in line]
    assert len(lines) == 2 and "ml" in lines[0] and "$2.0000" in lines[0] and "$1.0000" in lines[1]
    assert lines[0].count("█") == 20 and lines[1].count("█") == 10


def test_a_story_shows_attempts_findings_content_and_spans() -> None:
    story = {
        "found": True,
        "request": {
            "request_id": "r1", "status": 502, "api": "chat", "requested_model": "m", "provider": "openai",
            "latency_ms": 12.0, "ttft_ms": 0.0, "upstream_ms": 10.0, "cost_usd": None, "price_version": "x",
            "attempts.provider": ["openai", "backup"], "attempts.deployment": ["a", "b"],
            "attempts.status": [429, 502], "attempts.latency_ms": [3.0, 4.0], "attempts.error_code": ["rate", "bad"],
            "attempts.error_message": ["slow down", "boom"], "guard_findings.scanner": ["pii"],
            "guard_findings.rule": ["email"], "guard_findings.action": ["redact"],
        },
        "verdicts": [{"at": "t", "direction": "input", "policy": "p", "action": "redact",
                      "findings.scanner": ["pii"], "findings.rule": ["email"], "scan_us": 40}],
        "content": [{"direction": "input", "policy": "p", "redactions": 1, "retention_days": 30,
                     "texts.location": ["messages[0].content"], "texts.text": ["mail <EMAIL_1>"]}],
        "spans": [{"trace_id": "t", "span_id": "s1", "name": "guard.scan", "service": "guard"}],
    }  # fmt: skip
    console = Console(width=160, record=True, color_system=None)
    console.print(render_story(story))
    text = console.export_text()
    for part in ("r1", "502", "slow down", "backup", "email", "mail <EMAIL_1>", "guard.scan", "trace spans"):
        assert part in text, part
