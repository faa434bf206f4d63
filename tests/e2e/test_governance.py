"""Virtual keys, quotas and budgets through the real pipeline, with two ingress replicas counting against the
same NATS counters: budgets never overspent under concurrency, quotas global, revocation everywhere at once."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from typer.testing import CliRunner

from gatehouse.cli import app as cli
from shared.config import hash_key
from tests.e2e.governance_support import LONG_PROMPT, PLAIN_KEY, Gov, governed_stack
from tests.servers import serve_in_thread

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


def _webhook_recorder() -> Starlette:
    async def receive(request: Request) -> Response:
        request.app.state.posts.append(await request.json())
        return JSONResponse({"ok": True})

    app = Starlette(routes=[Route("/hook", receive, methods=["POST"])])
    app.state.posts = []
    return app


@pytest.fixture(scope="module")
def hook() -> Iterator[tuple[Starlette, str]]:
    app = _webhook_recorder()
    with serve_in_thread(app) as url:
        yield app, f"{url}/hook"


@pytest.fixture(scope="module")
def gov(tmp_path_factory: pytest.TempPathFactory, hook: tuple[Starlette, str]) -> Iterator[Gov]:
    with governed_stack(tmp_path_factory.mktemp("gov"), "gov", webhook_url=hook[1]) as running:
        yield running


def _window_has_room(seconds: float = 15.0) -> None:
    """Wait (by the clock, not for an event) until the current UTC minute has `seconds` left, so a burst
    counted per minute falls in one window."""
    while 60 - (time.time() % 60) < seconds:
        time.sleep(0.2)


def test_two_replicas_200_concurrent_requests_never_overspend_a_budget(gov: Gov) -> None:
    gov.team("budget")
    key_id, secret = gov.key("budget", limits={"budgets": [{"amount_usd": 500, "period": "total"}]})
    gov.wait_key(secret)
    # each request reserves its worst case, $10 (10 output tokens at $1): the budget covers 50
    responses = asyncio.run(gov.burst(secret, 200))
    statuses = [r.status_code for r in responses]
    assert statuses.count(200) + statuses.count(429) == 200, statuses
    refused = [r for r in responses if r.status_code == 429]
    assert all(r.json()["error"]["code"] == "budget_exceeded" for r in refused)
    assert all(r.json()["error"]["type"] == "insufficient_quota" for r in refused)
    served = statuses.count(200)
    assert gov.wait_count(f"SELECT count() FROM requests WHERE key_id = '{key_id}'", 200) == 200
    result = gov.sql(f"SELECT sum(settled_cost_usd), countIf(status = 200) FROM requests WHERE key_id = '{key_id}'")
    spent, ok = result.rows[0]
    assert ok == served
    assert float(spent) <= 500.0, f"overspent: ${spent}"  # type: ignore[arg-type]
    assert float(spent) >= 0.95 * 500, f"only ${spent} of $500 used"  # type: ignore[arg-type]
    # once settled, the counter holds exactly what was spent (no reservation left behind)
    subject = gov.subjects().spend_counter(f"key.{key_id}", "total")
    deadline = time.monotonic() + 20
    while gov.counter(subject) != round(float(spent) * 1_000_000) and time.monotonic() < deadline:  # type: ignore[arg-type]
        time.sleep(0.2)
    assert gov.counter(subject) == round(float(spent) * 1_000_000)  # type: ignore[arg-type]


def test_requests_per_minute_are_counted_once_across_replicas(gov: Gov) -> None:
    gov.team("rpm")
    _, secret = gov.key("rpm", limits={"quotas": {"rpm": 60}})
    gov.wait_key(secret)
    _window_has_room()
    responses = asyncio.run(gov.burst(secret, 100, model="mock-1"))
    statuses = [r.status_code for r in responses]
    assert statuses.count(200) == 60 and statuses.count(429) == 40, statuses
    limited = [r for r in responses if r.status_code == 429]
    assert all(r.json()["error"]["code"] == "rate_limit_exceeded" for r in limited)
    assert all(int(r.headers["retry-after"]) >= 1 for r in limited)
    ok = next(r for r in responses if r.status_code == 200)
    assert ok.headers["x-ratelimit-limit-requests"] == "60"
    assert 0 <= int(ok.headers["x-ratelimit-remaining-requests"]) < 60
    assert ok.headers["x-ratelimit-reset-requests"].endswith("s")
    assert limited[0].headers["x-ratelimit-remaining-requests"] == "0"


def test_tokens_per_minute_come_from_real_usage(gov: Gov) -> None:
    gov.team("tpm")
    key_id, secret = gov.key("tpm", limits={"quotas": {"tpm": 100}})
    gov.wait_key(secret)
    _window_has_room(30)
    seen: list[int] = []
    with httpx.Client(timeout=30) as client:
        for i in range(20):
            r = client.post(
                f"{gov.urls[i % 2]}/v1/chat/completions",
                json={"model": "mock-1", "messages": [{"role": "user", "content": LONG_PROMPT}]},
                headers={"authorization": f"Bearer {secret}"},
            )
            seen.append(r.status_code)
            if r.status_code == 429:
                assert "tokens per minute" in r.json()["error"]["message"]
                break
    assert seen[-1] == 429, seen
    gov.wait_count(f"SELECT count() FROM requests WHERE key_id = '{key_id}'", len(seen))
    used = gov.sql(
        f"SELECT sum(input_tokens + output_tokens), any(input_tokens + output_tokens) FROM requests "
        f"WHERE key_id = '{key_id}' AND status = 200"
    ).rows[0]
    total, each = int(used[0]), int(used[1])  # type: ignore[call-overload]
    # refused only once real usage reached the limit, and not long after (usage lands as responses end)
    assert 100 <= total < 100 + 3 * each, (total, each, seen)


def test_concurrency_limit_holds_under_50_parallel_streams(gov: Gov) -> None:
    gov.team("conc")
    _, secret = gov.key("conc", limits={"quotas": {"max_concurrency": 5}})
    gov.wait_key(secret)
    spans: list[tuple[float, float]] = []
    statuses: list[int] = []

    async def one(client: httpx.AsyncClient, i: int) -> None:
        body = {"model": "priced-slow", "messages": [{"role": "user", "content": LONG_PROMPT}], "stream": True}
        async with client.stream(
            "POST", f"{gov.urls[i % 2]}/v1/chat/completions", json=body, headers={"authorization": f"Bearer {secret}"}
        ) as r:
            start = time.monotonic()
            statuses.append(r.status_code)
            async for _ in r.aiter_bytes():
                pass
            if r.status_code == 200:
                spans.append((start, time.monotonic()))

    async def run() -> None:
        limits = httpx.Limits(max_connections=60, max_keepalive_connections=60)
        async with httpx.AsyncClient(timeout=60, limits=limits) as client:
            await asyncio.gather(*(one(client, i) for i in range(50)))

    asyncio.run(run())
    assert statuses.count(200) + statuses.count(429) == 50
    assert 1 <= statuses.count(200) <= 10
    # never more than 5 streams at once, whatever replica they went through
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    peak = depth = 0
    for _, step in events:
        depth += step
        peak = max(peak, depth)
    assert peak <= 5, peak


def test_key_lifecycle_reaches_every_replica_within_a_second(gov: Gov) -> None:
    gov.team("life")
    key_id, secret = gov.key("life", name="svc")
    assert secret.startswith("gh-") and gov.ok("GET", f"/keys/{key_id}")["display"] in (secret[:7] + "…" + secret[-4:],)
    assert "secret" not in gov.ok("GET", f"/keys/{key_id}")
    gov.wait_key(secret)
    # rotate: the new secret works, the old one during its grace and not after
    rotated = gov.ok("POST", f"/keys/{key_id}/rotate", {"grace_s": 2})
    new = str(rotated["secret"])
    gov.wait_key(new)
    assert httpx.get(f"{gov.urls[1]}/v1/models", headers={"authorization": f"Bearer {secret}"}).status_code == 200
    gov.wait_key(secret, 401, timeout=10)
    # disable and delete take effect on both replicas within a second
    gov.ok("PATCH", f"/keys/{key_id}", {"disabled": True})
    assert gov.wait_key(new, 401, timeout=1.0) < 1.0
    gov.ok("PATCH", f"/keys/{key_id}", {"disabled": False})
    gov.wait_key(new, 200)
    gov.ok("DELETE", f"/keys/{key_id}")
    assert gov.wait_key(new, 401, timeout=1.0) < 1.0
    assert gov.admin("GET", f"/keys/{key_id}").status_code == 404


def test_the_cli_manages_keys_and_shows_usage(gov: Gov) -> None:
    runner = CliRunner()
    env = {"GATEHOUSE_ADMIN_KEY": gov.admin_key}
    url = ["--url", gov.urls[1]]
    out = runner.invoke(cli, ["teams", "create", "cli-ml", "--budget", "50/month", "--rpm", "600", *url], env=env)
    assert out.exit_code == 0, out.output
    out = runner.invoke(cli, ["projects", "create", "search", "--team", "cli-ml", *url], env=env)
    assert out.exit_code == 0, out.output
    out = runner.invoke(
        cli,
        ["keys", "create", "--team", "cli-ml", "--project", "search", "--budget", "50/month", "--rpm", "600",
         "--tpm", "200k", "--id", "cli-key", *url],
        env=env,
    )  # fmt: skip
    assert out.exit_code == 0, out.output
    secret = next(w for w in out.output.split() if w.startswith("gh-"))
    shown = gov.ok("GET", "/keys/cli-key")
    assert shown["limits"]["quotas"] == {
        "rpm": 600,
        "tpm": 200_000,
        "max_concurrency": None,
        "tool_calls_per_minute": None,
    }  # type: ignore[index]
    assert shown["limits"]["budgets"][0]["amount_usd"] == 50 and shown["limits"]["budgets"][0]["period"] == "monthly"  # type: ignore[index]
    gov.wait_key(secret)
    r = httpx.post(
        f"{gov.urls[0]}/v1/chat/completions",
        json={"model": "priced", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3},
        headers={"authorization": f"Bearer {secret}"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    out = runner.invoke(cli, ["keys", "rotate", "cli-key", "--grace", "1h", *url], env=env)
    assert out.exit_code == 0 and "new secret" in out.output, out.output
    out = runner.invoke(cli, ["keys", "disable", "cli-key", *url], env=env)
    assert out.exit_code == 0, out.output
    assert gov.ok("GET", "/keys/cli-key")["disabled"] is True
    gov.wait_count("SELECT count() FROM requests WHERE key_id = 'cli-key'", 1)
    out = runner.invoke(cli, ["usage", "--team", "cli-ml", "--by", "project", "--format", "json", *url], env=env)
    assert out.exit_code == 0, out.output
    assert '"project": "search"' in out.output and '"requests": 1' in out.output
    out = runner.invoke(cli, ["keys", "delete", "cli-key", *url], env=env)
    assert out.exit_code == 0, out.output


def test_a_team_admin_stays_inside_its_team_and_its_limits(gov: Gov) -> None:
    gov.team("alpha", quotas={"rpm": 100}, budgets=[{"amount_usd": 100, "period": "monthly"}], models=["mock-*"])
    gov.team("beta")
    _, admin_secret = gov.key("alpha", role="team_admin", name="alpha-admin")
    gov.wait_key(admin_secret)
    # within its team and limits: fine
    made = gov.admin(
        "POST", "/keys", {"team": "alpha", "limits": {"quotas": {"rpm": 50}, "models": ["mock-1"]}}, key=admin_secret
    )
    assert made.status_code == 201, made.text
    # another team: refused
    r = gov.admin("POST", "/keys", {"team": "beta"}, key=admin_secret)
    assert r.status_code == 403 and r.json()["error"]["code"] == "permission_denied"
    # beyond the team's own limits: refused, naming what
    for limits, what in [
        ({"quotas": {"rpm": 500}, "models": ["mock-1"]}, "quotas.rpm"),
        ({"budgets": [{"amount_usd": 1000, "period": "monthly"}], "models": ["mock-1"]}, "budgets"),
        ({"models": ["priced"]}, "models"),
    ]:
        r = gov.admin("POST", "/keys", {"team": "alpha", "limits": limits}, key=admin_secret)
        assert r.status_code == 403 and what in r.json()["error"]["message"], r.text
    # no team_admin keys, no team changes, and it sees only its own team
    assert (
        gov.admin(
            "POST", "/keys", {"team": "alpha", "role": "team_admin", "limits": {"models": ["mock-1"]}}, key=admin_secret
        ).status_code
        == 403
    )
    assert gov.admin("PATCH", "/teams/alpha", {"name": "x"}, key=admin_secret).status_code == 403
    listed = gov.admin("GET", "/keys", key=admin_secret).json()["data"]
    assert listed and all(k["team"] == "alpha" for k in listed)
    assert gov.admin("GET", "/teams/beta", key=admin_secret).status_code == 404
    # an api key is no admin
    _, plain = gov.key("beta")
    gov.wait_key(plain)
    assert gov.admin("GET", "/keys", key=plain).status_code == 403


def test_every_admin_action_is_audited_without_a_secret(gov: Gov) -> None:
    gov.team("audited")
    key_id, secret = gov.key("audited")
    rotated = str(gov.ok("POST", f"/keys/{key_id}/rotate", {"grace_s": 0})["secret"])
    gov.ok("PATCH", f"/keys/{key_id}", {"disabled": True})
    gov.ok("DELETE", f"/keys/{key_id}")
    query = f"SELECT action, actor, before, after FROM audit_log WHERE target_id = '{key_id}' ORDER BY at"
    gov.wait_count(f"SELECT count() FROM audit_log WHERE target_id = '{key_id}'", 4)
    rows = gov.sql(query).rows
    assert [r[0] for r in rows] == ["key.create", "key.rotate", "key.disable", "key.delete"]
    assert {r[1] for r in rows} == {"admin"}
    text = str(rows)
    for value in (secret, rotated, secret[3:], rotated[3:]):
        assert value not in text
    assert hash_key(secret) not in text and hash_key(rotated) not in text


def test_plain_and_static_keys_need_no_counters_and_the_request_names_its_user(gov: Gov) -> None:
    r = httpx.post(
        f"{gov.urls[1]}/v1/chat/completions",
        json={"model": "mock-1", "messages": [{"role": "user", "content": "hi"}], "user": "alice@example.com"},
        headers={"authorization": f"Bearer {PLAIN_KEY}"},
        timeout=30,
    )
    assert r.status_code == 200 and "x-ratelimit-limit-requests" not in r.headers
    rid = r.headers["x-request-id"]
    assert gov.wait_count(f"SELECT count() FROM requests WHERE request_id = '{rid}'", 1) == 1
    # a key without an owner: the request's `user` field attributes it
    assert gov.sql(f"SELECT key_id, user FROM requests WHERE request_id = '{rid}'").rows == [
        ["plain", "alice@example.com"]
    ]


def test_budget_alerts_fire_once_per_threshold_and_reach_the_webhook(gov: Gov, hook: tuple[Starlette, str]) -> None:
    gov.team("alerts", budgets=[{"amount_usd": 100, "period": "monthly", "alerts": [50, 80, 100]}])
    key_id, secret = gov.key("alerts")
    gov.wait_key(secret)
    # $10 a request (10 output tokens at $1): 5 reach 50 %, 8 reach 80 %; the 100 % alert never fires
    with httpx.Client(timeout=30) as client:
        for i in range(8):
            r = client.post(
                f"{gov.urls[i % 2]}/v1/chat/completions",
                json={"model": "priced", "messages": [{"role": "user", "content": LONG_PROMPT}], "max_tokens": 10},
                headers={"authorization": f"Bearer {secret}"},
            )
            assert r.status_code == 200, r.text
    assert gov.wait_count("SELECT count() FROM budget_alerts WHERE scope = 'team.alerts'", 2) == 2
    rows = gov.sql(
        "SELECT threshold_pct, amount_usd, spent_usd, period FROM budget_alerts WHERE scope = 'team.alerts' "
        "ORDER BY threshold_pct"
    ).rows
    assert [r[0] for r in rows] == [50, 80] and rows[0][1] == 100.0 and rows[0][3] == "monthly"
    assert rows[0][2] == 50.0 and rows[1][2] == 80.0
    deadline = time.monotonic() + 20
    app = hook[0]
    while len([p for p in app.state.posts if p["alert"]["scope"] == "team.alerts"]) < 2:
        assert time.monotonic() < deadline, app.state.posts
        time.sleep(0.1)
    posts = [p for p in app.state.posts if p["alert"]["scope"] == "team.alerts"]
    assert sorted(p["alert"]["threshold_pct"] for p in posts) == [50, 80]
    assert all("team.alerts" in p["text"] and "$100" in p["text"] for p in posts)  # Slack-compatible `text`
    # a ninth request crosses nothing new
    r = httpx.post(
        f"{gov.urls[0]}/v1/chat/completions",
        json={"model": "priced", "messages": [{"role": "user", "content": LONG_PROMPT}], "max_tokens": 5},
        headers={"authorization": f"Bearer {secret}"},
        timeout=30,
    )
    assert r.status_code == 200
    gov.wait_count(f"SELECT count() FROM requests WHERE key_id = '{key_id}' AND settled_cost_usd > 0", 9)
    assert gov.sql("SELECT count() FROM budget_alerts WHERE scope = 'team.alerts'").rows == [[2]]
