"""A stream that would cross a hard budget (a provider ignoring max_tokens) is ended with a final error
event, its upstream call stopped, and its record says so."""

from __future__ import annotations

import time

import httpx

from tests.e2e.conftest import RunningStack


def test_a_stream_past_its_reservation_is_ended_with_a_budget_error(running_stack: RunningStack) -> None:
    stack = running_stack.stack
    admin = {"authorization": f"Bearer {stack.admin_key_file.read_text().strip()}"}
    base = f"{stack.ingress_url}/admin/v1"
    assert httpx.post(f"{base}/teams", json={"id": "stream-budget"}, headers=admin).status_code == 201
    made = httpx.post(
        f"{base}/keys",
        json={"team": "stream-budget", "limits": {"budgets": [{"amount_usd": 100, "period": "total"}]}},
        headers=admin,
    )
    assert made.status_code == 201, made.text
    secret = made.json()["secret"]
    deadline = time.monotonic() + 5
    while (
        httpx.get(f"{running_stack.base_url}/models", headers={"authorization": f"Bearer {secret}"}).status_code != 200
    ):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    # the emulator answers ~25 words whatever max_tokens says; the reservation covers 2 tokens at $1 each
    body = {
        "model": "emu-priced",
        "max_tokens": 2,
        "stream": True,
        "messages": [{"role": "user", "content": " ".join(f"word{i}" for i in range(40))}],
    }
    with httpx.stream(
        "POST", f"{running_stack.base_url}/chat/completions", json=body, headers={"authorization": f"Bearer {secret}"}
    ) as r:
        assert r.status_code == 200
        request_id = r.headers["x-request-id"]
        lines = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert '"budget_exceeded"' in lines[-1] or '"budget_exceeded"' in lines[-2], lines[-3:]
    rows = running_stack.wait_rows(
        f"SELECT status, error_code, output_tokens, settled_cost_usd FROM requests WHERE request_id = '{request_id}'", 1
    ).rows
    status, code, output_tokens, cost = rows[0]
    assert (status, code) == (429, "budget_exceeded")
    assert output_tokens > 2 and cost == float(output_tokens)  # charged what was produced, not less
