"""Routing through the running stack: failover and fallbacks leave every attempt in the request's record, the
answer names its deployment, a key that may choose a strategy does so per request (others get 403), the
client's own deadline is kept, and `GET /admin/v1/deployments` / `gatehouse status` show deployment health."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import httpx
import pytest

from tests.e2e.conftest import API_KEY, ROUTER_KEY, RunningStack
from tests.emulators import faults

pytestmark = pytest.mark.e2e
HELLO = [{"role": "user", "content": "route me"}]


def post(stack: RunningStack, model: str, key: str = API_KEY, **headers: str) -> httpx.Response:
    with httpx.Client(timeout=30) as http:
        return http.post(
            f"{stack.base_url}/chat/completions",
            headers={"Authorization": f"Bearer {key}", **headers},
            json={"model": model, "messages": HELLO},
        )


def test_every_attempt_is_in_the_record_and_the_answer_names_its_deployment(running_stack: RunningStack) -> None:
    app = running_stack.emulators["faults"]
    faults.script(app, "e2e-flaky", ["fail:500"])
    faults.script(app, "e2e-steady", ["429:0.2"])
    r = post(running_stack, "routed")
    assert r.status_code == 200, r.text
    # flaky failed (500), steady was rate-limited (Retry-After 0.2 s): the fallback model answered
    assert r.json()["model"] == "e2e-backup"
    assert (
        r.headers["x-gatehouse-deployment"] == "faults/e2e-backup" and r.headers["x-gatehouse-model"] == "routed-backup"
    )
    rid = r.headers["x-request-id"]
    row = running_stack.wait_rows(
        "SELECT attempts.deployment, attempts.status, attempts.route, attempts.model, attempts.retry_delay_ms, "
        f"attempts.error_code, route_strategy, answered_model, deployment FROM requests WHERE request_id = '{rid}'",
        1,
    ).rows[0]
    deployments, statuses, routes, models, delays, codes, strategy, answered, deployment = row
    assert deployments == ["faults/e2e-flaky", "faults/e2e-steady", "faults/e2e-backup"]
    assert statuses == [502, 429, 200] and codes == ["bad_gateway", "rate_limit_exceeded", ""]
    assert routes == ["first", "failover", "fallback"] and models == ["routed", "routed", "routed-backup"]
    assert delays == [0.0, 0.0, 0.0]
    assert (strategy, answered, deployment) == ("priority", "routed-backup", "faults/e2e-backup")


def test_a_stream_names_its_deployment_in_its_headers(running_stack: RunningStack) -> None:
    with (
        httpx.Client(timeout=30) as http,
        http.stream(
            "POST",
            f"{running_stack.base_url}/chat/completions",
            headers={"Authorization": f"Bearer {API_KEY}"},
            json={"model": "routed-two", "messages": HELLO, "stream": True},
        ) as r,
    ):
        body = r.read().decode()
    assert r.status_code == 200 and r.headers["x-gatehouse-deployment"] == "faults/e2e-one"
    text = "".join(
        json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
        for line in body.splitlines()
        if line.startswith("data: {") and json.loads(line[6:])["choices"]
    )
    assert text == "answer from e2e-one "


def test_a_strategy_per_request_only_where_the_key_allows_it(running_stack: RunningStack) -> None:
    refused = post(running_stack, "routed-two", **{"x-gatehouse-route": "weighted"})
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "permission_denied"
    unknown = post(running_stack, "routed-two", ROUTER_KEY, **{"x-gatehouse-route": "fastest-please"})
    assert unknown.status_code == 400
    chosen = {post(running_stack, "routed-two", ROUTER_KEY, **{"x-gatehouse-route": "weighted"}).headers[
        "x-gatehouse-deployment"] for _ in range(24)}  # fmt: skip
    assert chosen == {"faults/e2e-one", "faults/e2e-two"}  # priority would always say e2e-one
    with httpx.Client(timeout=30) as http:
        r = http.post(
            f"{running_stack.base_url}/chat/completions",
            headers={"Authorization": f"Bearer {ROUTER_KEY}"},
            json={"model": "routed-two", "messages": HELLO, "gatehouse_route": "cost"},
        )
    assert r.status_code == 200
    sent = running_stack.emulators["faults"].state  # the field is gatehouse's, never the provider's
    assert sent.served["e2e-one"] or sent.served["e2e-two"]


def test_the_clients_deadline_travels_with_the_request(running_stack: RunningStack) -> None:
    faults.script(running_stack.emulators["faults"], "e2e-one", ["slow:3000"])
    t0 = time.monotonic()
    r = post(running_stack, "routed-two", **{"x-gatehouse-timeout": "0.8"})
    took = time.monotonic() - t0
    assert r.status_code == 504 and took < 2.5, (r.status_code, took)


def test_deployment_health_in_the_admin_api_and_gatehouse_status(running_stack: RunningStack) -> None:
    app = running_stack.emulators["faults"]
    faults.script(app, "e2e-one", ["fail:500"])
    faults.script(app, "e2e-two", ["429:60"])
    r = post(running_stack, "routed-two")  # one fails over to two, rate-limited for a minute; one again answers
    assert r.status_code == 200 and r.headers["x-gatehouse-deployment"] == "faults/e2e-one"
    admin_key = running_stack.stack.admin_key_file.read_text().strip()
    with httpx.Client(timeout=10) as http:
        r = http.get(
            f"{running_stack.base_url.removesuffix('/v1')}/admin/v1/deployments",
            headers={"Authorization": f"Bearer {admin_key}"},
        )
        assert r.status_code == 200, r.text
        fleet = r.json()
        denied = http.get(
            f"{running_stack.base_url.removesuffix('/v1')}/admin/v1/deployments",
            headers={"Authorization": f"Bearer {API_KEY}"},
        )
    assert denied.status_code in (401, 403)
    rows = {d["deployment"]: d for d in fleet["deployments"]}
    assert len(fleet["replicas"]) == 1
    two = rows["faults/e2e-two"]
    assert two["state"] == "cooldown" and two["until"] > time.time() + 50 and "Rate limit" in two["reason"]
    one = rows["faults/e2e-one"]
    assert one["state"] == "healthy" and one["ewma_latency_ms"] is not None and one["attempts"] > 0
    env = {**os.environ, "GATEHOUSE_ADMIN_KEY": admin_key, "COLUMNS": "250"}
    out = subprocess.run(
        [sys.executable, "-m", "gatehouse.cli", "status", "--url", running_stack.base_url.removesuffix("/v1")],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "faults/e2e-two" in out.stdout and "cooldown" in out.stdout and "router replicas: 1" in out.stdout
