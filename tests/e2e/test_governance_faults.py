"""Governance when things break: an ingress replica dies holding reservations, accounting dies while
settling, and the directory or the counters become unreachable."""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import nats
import pytest

from tests.e2e.governance_support import LONG_PROMPT, PLAIN_KEY, Gov, governed_stack

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


@pytest.fixture
def gov(tmp_path: Path) -> Iterator[Gov]:
    with governed_stack(tmp_path, "fault") as running:
        yield running


def _post(url: str, secret: str, model: str = "priced", max_tokens: int = 10) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/chat/completions",
        json={"model": model, "messages": [{"role": "user", "content": LONG_PROMPT}], "max_tokens": max_tokens},
        headers={"authorization": f"Bearer {secret}"},
        timeout=30,
    )


def test_reservations_of_a_killed_ingress_replica_expire_and_free_the_budget(gov: Gov) -> None:
    gov.team("crash")
    key_id, secret = gov.key("crash", limits={"budgets": [{"amount_usd": 10, "period": "total"}]})
    gov.wait_key(secret)
    # a slow stream on replica 1 reserves the whole budget ($10)
    started = threading.Event()
    outcome: list[str] = []
    held: list[str] = []

    def slow() -> None:
        body = {
            "model": "priced-slow",
            "messages": [{"role": "user", "content": LONG_PROMPT}],
            "max_tokens": 10,
            "stream": True,
        }
        try:
            with httpx.stream(
                "POST",
                f"{gov.urls[1]}/v1/chat/completions",
                json=body,
                headers={"authorization": f"Bearer {secret}"},
                timeout=30,
            ) as r:
                outcome.append(str(r.status_code))
                held.append(r.headers["x-request-id"])
                for _ in r.iter_bytes():
                    started.set()
        except httpx.HTTPError as exc:
            outcome.append(type(exc).__name__)
        started.set()

    thread = threading.Thread(target=slow)
    thread.start()
    assert started.wait(20) and outcome == ["200"]
    refused = _post(gov.urls[0], secret)
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "budget_exceeded"
    # the replica holding the reservation dies mid-stream: no record will ever settle it
    replica = next(c for c in gov.stack.children if c.service == "ingress" and c.index == 1)
    assert replica.process is not None
    replica.process.send_signal(signal.SIGKILL)
    replica.process.wait(10)
    thread.join(30)
    # it expires (request deadline 8 s + 1 s grace) and accounting releases it: the budget is free again
    deadline = time.monotonic() + 40
    while (r := _post(gov.urls[0], secret)).status_code == 429 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert r.status_code == 200, r.text
    # the killed request's reservation says why the budget came back
    assert gov.reservation_state(held[0]) == "released"
    assert gov.reservation_state(r.headers["x-request-id"]) in ("live", "settled")
    assert gov.wait_count(f"SELECT count() FROM requests WHERE key_id = '{key_id}' AND status = 200", 1) == 1


def test_accounting_dying_between_settling_and_acking_never_settles_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the failpoint makes accounting exit right after it settled a batch, before storing and acking it:
    # the batch is delivered again to the restarted process, which must not settle it a second time
    marker = tmp_path / "crashed"
    monkeypatch.setenv("GATEHOUSE_ACCOUNTING_CRASH_AFTER_SETTLE_FILE", str(marker))
    with governed_stack(tmp_path, "settle") as gov:
        gov.team("settle")
        key_id, secret = gov.key("settle", limits={"budgets": [{"amount_usd": 100_000, "period": "total"}]})
        gov.wait_key(secret)
        statuses = [r.status_code for r in asyncio.run(gov.burst(secret, 60, max_tokens=7))]
        assert statuses == [200] * 60
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert time.monotonic() < deadline, "accounting never reached the failpoint"
            time.sleep(0.1)
        accounting = next(c for c in gov.stack.children if c.service == "accounting")
        assert accounting.process is not None and accounting.process.wait(10) == 70
        restarted = time.monotonic() + 30
        while not gov.stack.supervise_once():
            assert time.monotonic() < restarted
            time.sleep(0.2)
        assert gov.wait_count(f"SELECT count() FROM requests WHERE key_id = '{key_id}'", 60, timeout=90) == 60
        spent = gov.sql(f"SELECT sum(settled_cost_usd) FROM requests WHERE key_id = '{key_id}'").rows[0][0]
        assert spent == pytest.approx(60 * 7.0)
        subjects = gov.subjects()
        spend = subjects.spend_counter(f"key.{key_id}", "total")
        settled = subjects.settled_counter(f"key.{key_id}", "total")
        deadline = time.monotonic() + 30
        while gov.counter(settled) < 60 * 7_000_000 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert gov.counter(settled) == 60 * 7_000_000  # not more: nothing settled twice
        assert gov.counter(spend) == 60 * 7_000_000  # every reservation moved to its actual cost


def test_with_the_directory_and_counters_gone_cached_keys_pass_and_budgets_fail_closed(gov: Gov) -> None:
    gov.team("degraded")
    _, budgeted = gov.key("degraded", limits={"budgets": [{"amount_usd": 100, "period": "total"}]})
    _, virtual = gov.key("degraded")
    _, limited = gov.key("degraded", limits={"quotas": {"rpm": 1000}})
    for secret in (budgeted, virtual, limited):
        gov.wait_key(secret)
    assert _post(gov.urls[0], budgeted).status_code == 200
    subjects = gov.subjects()

    async def remove_streams() -> None:
        assert gov.stack.nats is not None
        nc = await nats.connect(
            gov.stack.nats.url,
            nkeys_seed=str(gov.stack.admin_seed_file),
            inbox_prefix=subjects.role_inbox("admin").encode(),
        )
        try:
            js = nc.jetstream()
            await js.delete_stream(subjects.counters_stream)
            await js.delete_stream(subjects.quotas_stream)
            await js.delete_stream(f"KV_{subjects.directory_bucket}")
        finally:
            await nc.close()

    asyncio.run(remove_streams())
    for url in gov.urls:
        # the keys live on in every replica's mirror; quotas fail open (the default), uncounted
        for secret in (PLAIN_KEY, virtual, limited):
            r = _post(url, secret, model="mock-1")
            assert r.status_code == 200, r.text
            assert "x-ratelimit-remaining-requests" not in r.headers
        # without its counter, nothing proves a budget covers the request: 503, clearly
        r = _post(url, budgeted)
        assert r.status_code == 503, r.text
        assert "Budget counters are unavailable" in r.json()["error"]["message"]
        assert int(r.headers["retry-after"]) >= 1
