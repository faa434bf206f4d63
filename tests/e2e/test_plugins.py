"""Plugins and webhooks through the real pipeline (nats-server, the five service processes, chDB, the mock
provider): each hook's failure policy as the client sees it, header rewrites, tags in the ClickHouse row,
and webhook deliveries (retries, HMAC signatures, dead letters, a Slack-shaped budget alert, a restart of
the process delivering them) recorded in `webhook_deliveries`."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from shared.config import hash_key
from shared.webhook_signing import verify
from tests.e2e.governance_support import LONG_PROMPT, PRICE, Gov, _port_pair
from tests.e2e.plugin_support import MODE_HEADER, Receiver, plugins_yaml
from tests.servers import serve_in_thread

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

KEY = "sk-plugins-e2e-0001"
SECRET_ENV = "E2E_WEBHOOK_SECRET"
SIGNING_SECRET = "whsec-e2e-0123456789"


@dataclass
class Env:
    gov: Gov
    url: str
    events_file: Path
    flaky: Receiver
    dead: Receiver
    slack: Receiver
    blocks: Receiver
    revived: Receiver
    down: Receiver

    def chat(
        self, headers: dict[str, str] | None = None, model: str = "mock-1", content: str = "hello"
    ) -> httpx.Response:
        return httpx.post(
            f"{self.url}/v1/chat/completions",
            json={"model": model, "messages": [{"role": "user", "content": content}]},
            headers={"authorization": f"Bearer {KEY}", **(headers or {})},
            timeout=20,
        )

    def row(self, request_id: str, columns: str) -> list[object]:
        self.gov.wait_count(f"SELECT count() FROM requests WHERE request_id = '{request_id}'", 1)
        rows = self.gov.sql(f"SELECT {columns} FROM requests WHERE request_id = '{request_id}'").rows
        assert len(rows) == 1, rows
        return rows[0]


def _config(urls: dict[str, str], dead_url: str, events_file: Path) -> str:
    def hook(name: str, events: str, extra: str = "") -> str:
        return f"""  - name: {name}
    url: {urls[name]}/hook
    secret_env: {SECRET_ENV}
    events: [{events}]
    backoff_s: 0.1
    max_backoff_s: 0.5
    timeout_s: 5
{extra}"""

    hooks = "".join(
        (
            hook("flaky", "budget_alert"),
            hook("dead", "budget_alert", "    max_attempts: 3\n"),
            hook("slack", "budget_alert", "    format: gatehouse.plugins.slack_alerts:format_event\n"),
            hook("blocks", "request_blocked"),
            hook("revived", "budget_alert", "    max_attempts: 20\n    max_backoff_s: 1\n"),
            hook("down", "deployment_down", "    format: gatehouse.plugins.slack_alerts:format_event\n"),
        )
    )
    return f"""
server: {{host: 127.0.0.1, port: 0, request_timeout_s: 15}}
keys:
  - {{id: plugins, sha256: {hash_key(KEY)}, team: qa}}
providers:
  mock: {{kind: mock}}
  dead: {{kind: openai, api_base: "{dead_url}/v1", api_key_env: E2E_DEAD_PROVIDER_KEY, connect_timeout_s: 1}}
models:
  - name: down
    deployments: [{{provider: dead, model: gpt-nowhere}}]
  - name: mock-1
    deployments: [{{provider: mock, model: mock-1}}]
  - name: priced
    max_output_tokens: 64
    deployments: [{{provider: mock, model: priced, price: {PRICE}}}]
accounting:
  flush_interval_s: 0.2
{plugins_yaml(str(events_file))}webhooks:
{hooks}"""


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    from gatehouse.launcher import Stack
    from gatehouse.natsserver import free_port

    tmp: Path = tmp_path_factory.mktemp("plugins")
    receivers = {
        "flaky": Receiver(fail_first=2),
        "dead": Receiver(failing=True, fail_status=503),
        "slack": Receiver(),
        "blocks": Receiver(),
        "revived": Receiver(failing=True),
        "down": Receiver(),
    }
    os.environ[SECRET_ENV] = SIGNING_SECRET
    os.environ["E2E_DEAD_PROVIDER_KEY"] = "sk-nobody-listens"
    with ExitStack() as servers:
        urls = {name: servers.enter_context(serve_in_thread(r.app())) for name, r in receivers.items()}
        config = tmp / "gatehouse.yaml"
        # nothing listens at the dead provider's port
        config.write_text(_config(urls, f"http://127.0.0.1:{free_port()}", tmp / "events.jsonl"))
        stack = Stack(
            config=config, data_dir=tmp / "data", host="127.0.0.1", port=_port_pair(), prefix="plg",
            nats_port=free_port(),
        )  # fmt: skip
        stack.start()
        try:
            if not stack.wait_ready(90):
                logs = "\n".join(
                    f"--- {p.name}\n{p.read_text()[-3000:]}" for p in (tmp / "data" / "logs").glob("*.log")
                )
                pytest.fail(f"stack did not become ready:\n{logs}")
            yield Env(Gov(stack), stack.ingress_url, tmp / "events.jsonl", **receivers)
        finally:
            stack.stop()


def _plugin_error(r: httpx.Response, plugin: str) -> None:
    assert r.status_code == 503, r.text
    error = r.json()["error"]
    assert error["code"] == "plugin_error" and error["type"] == "api_error"
    assert f"`{plugin}`" in error["message"]
    assert "Traceback" not in r.text and "RuntimeError" not in r.text and "secret detail" not in r.text


# ---- failure policies -------------------------------------------------------------------------------------
def test_a_plugin_that_raises_under_fail_open_lets_the_request_through(env: Env) -> None:
    r = env.chat({MODE_HEADER: "raise-open"})
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"]
    assert env.row(r.headers["x-request-id"], "status") == [200]


def test_a_plugin_that_hangs_under_fail_open_is_cut_at_its_timeout_and_the_request_goes_on(env: Env) -> None:
    r = env.chat({MODE_HEADER: "hang-open"})  # the plugin sleeps 30 s; the client waits 20 s at most
    assert r.status_code == 200, r.text


def test_a_plugin_that_raises_under_fail_closed_gives_503_plugin_error_naming_it(env: Env) -> None:
    r = env.chat({"x-gatehouse-tag-mode": "raise-closed"})
    _plugin_error(r, "faulty-closed")
    assert env.row(r.headers["x-request-id"], "status, error_code") == [503, "plugin_error"]


def test_a_plugin_that_hangs_under_fail_closed_gives_503_plugin_error(env: Env) -> None:
    _plugin_error(env.chat({"x-gatehouse-tag-mode": "hang-closed"}), "faulty-closed")
    _plugin_error(env.chat({"x-gatehouse-tag-mode": "hang-dispatch"}), "gatekeeper")


def test_a_result_its_point_does_not_allow_is_a_failure_of_the_plugin(env: Env) -> None:
    _plugin_error(env.chat({"x-gatehouse-tag-mode": "forbidden-header"}), "gatekeeper")


def test_a_plugin_may_block_with_its_own_openai_style_error(env: Env) -> None:
    r = env.chat({"x-gatehouse-tag-mode": "block"})
    assert r.status_code == 403, r.text
    assert r.json()["error"] == {
        "message": "Refused by the gatekeeper plugin.",
        "type": "permission_error",
        "param": None,
        "code": "gatekeeper_refused",
    }
    assert env.row(r.headers["x-request-id"], "status, error_code, provider") == [403, "gatekeeper_refused", ""]


def test_a_plugin_rewrites_a_request_header_and_adds_a_response_header(env: Env) -> None:
    r = env.chat({MODE_HEADER: "rewrite", "x-gatehouse-tag-drop": "client-value"})
    assert r.status_code == 200, r.text
    usage = r.json()["usage"]
    assert r.headers["x-plugin-seen"] == f"mock-1/200/{usage['completion_tokens']}"
    # the plugins saw the headers they declared, never the key (declared by one of them all the same)
    assert r.headers["x-plugin-headers"] == MODE_HEADER
    tags = env.row(r.headers["x-request-id"], "tags")[0]
    assert isinstance(tags, dict)
    assert tags.get("rewritten") == "by-plugin"  # a header the plugin set became a tag
    assert "drop" not in tags  # a header the plugin removed did not


def test_requests_without_a_mode_are_untouched_by_the_test_plugins(env: Env) -> None:
    r = env.chat()
    assert r.status_code == 200 and "x-plugin-seen" not in r.headers


# ---- the shipped tagging plugin ---------------------------------------------------------------------------
def test_header_tags_puts_configured_headers_into_the_clickhouse_row(env: Env) -> None:
    r = env.chat({"x-team-name": "ml-platform", "x-cost-center": "cc-42", "x-other": "not-configured"})
    assert r.status_code == 200, r.text
    tags = env.row(r.headers["x-request-id"], "tags")[0]
    assert isinstance(tags, dict)
    assert tags.get("x-team-name") == "ml-platform" and tags.get("cost_center") == "cc-42"
    assert "x-other" not in tags and "x-cost-center" not in tags
    # the tag is queryable like any other
    rows = env.gov.sql("SELECT count() FROM requests WHERE tags['cost_center'] = 'cc-42'").rows
    assert rows == [[1]]


def test_on_event_sees_the_stored_record_with_its_cost(env: Env) -> None:
    r = env.chat({"x-team-name": "on-event"}, model="priced")
    assert r.status_code == 200, r.text
    rid = r.headers["x-request-id"]
    cost = env.row(rid, "cost_usd")[0]

    def seen() -> list[dict[str, object]]:
        if not env.events_file.exists():
            return []
        views = [json.loads(line) for line in env.events_file.read_text().splitlines()]
        return [v for v in views if v["request_id"] == rid]

    _wait(seen, "on_event never saw the request")
    (view,) = seen()
    assert view["point"] == "on_event" and view["status"] == 200 and view["model"] == "priced"
    assert view["key_id"] == "plugins" and view["team"] == "qa" and view["tags"]["x-team-name"] == "on-event"
    assert view["cost_usd"] == cost and isinstance(cost, float) and cost > 0
    assert view["output_tokens"] == r.json()["usage"]["completion_tokens"]
    assert view["headers"] == {}  # accounting never had the request's headers


# ---- webhooks ---------------------------------------------------------------------------------------------
def _wait(predicate: object, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def _deliveries(env: Env, webhook: str, outcome: str, count: int = 1) -> list[list[object]]:
    query = f"SELECT count() FROM webhook_deliveries WHERE webhook = '{webhook}' AND outcome = '{outcome}'"
    env.gov.wait_count(query, count, timeout=60)
    return env.gov.sql(
        "SELECT event_id, event_type, attempts, http_status, error, signed, body FROM webhook_deliveries "
        f"WHERE webhook = '{webhook}' ORDER BY event_id"
    ).rows


@pytest.fixture(scope="module")
def alert(env: Env) -> str:
    """Cross the 50 % threshold of a $20 team budget once ($10 a request): the delivery id prefix."""
    env.gov.team("hooked", budgets=[{"amount_usd": 20, "period": "monthly", "alerts": [50]}])
    _, secret = env.gov.key("hooked")
    env.gov.wait_key(secret)
    r = httpx.post(
        f"{env.url}/v1/chat/completions",
        json={"model": "priced", "messages": [{"role": "user", "content": LONG_PROMPT}], "max_tokens": 10},
        headers={"authorization": f"Bearer {secret}"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    assert env.gov.wait_count("SELECT count() FROM budget_alerts WHERE scope = 'team.hooked'", 1) == 1
    return "budget_alert.alert.team.hooked."


def test_an_endpoint_failing_twice_gets_one_delivery_recorded_as_delivered_with_a_valid_signature(
    env: Env, alert: str
) -> None:
    rows = _deliveries(env, "flaky", "delivered")
    assert len(rows) == 1, rows
    delivery_id, event_type, attempts, status, error, signed, body = rows[0]
    assert str(delivery_id).startswith(alert) and event_type == "budget_alert"
    assert (attempts, status, error, signed, body) == (3, 200, "", True, "")
    answered = [p[2] for p in env.flaky.posts]
    assert answered == [500, 500, 200]  # retried until it answered, then never again
    ids = {p[0]["webhook-id"] for p in env.flaky.posts}
    assert ids == {delivery_id}  # the same delivery id on every attempt
    headers, payload, _ = env.flaky.answered(200)[0]
    assert verify(SIGNING_SECRET, headers, payload)
    assert not verify("another-secret", headers, payload)
    assert not verify(SIGNING_SECRET, headers, payload + b" ")
    assert not verify(SIGNING_SECRET, {**headers, "webhook-id": f"{delivery_id}.again"}, payload)  # id is signed
    sent = json.loads(payload)
    assert sent["type"] == "budget_alert" and sent["id"] == delivery_id
    assert sent["data"]["scope"] == "team.hooked" and sent["data"]["threshold_pct"] == 50


def test_an_endpoint_that_always_fails_ends_in_the_dead_letter_record(env: Env, alert: str) -> None:
    rows = _deliveries(env, "dead", "dead")
    assert len(rows) == 1, rows
    delivery_id, _, attempts, status, error, _, body = rows[0]
    assert str(delivery_id).startswith(alert)
    assert (attempts, status, error) == (3, 503, "HTTP 503")
    assert len(env.dead.posts) == 3
    # the dead letter keeps what was not delivered
    assert json.loads(str(body))["data"]["scope"] == "team.hooked"


def test_the_slack_webhook_gets_text_and_blocks_when_a_budget_threshold_is_crossed(env: Env, alert: str) -> None:
    _deliveries(env, "slack", "delivered")
    headers, payload, _ = env.slack.answered(200)[0]
    message = json.loads(payload)
    assert set(message) == {"text", "blocks"}
    assert "team.hooked" in message["text"] and "50%" in message["text"] and "$20.00" in message["text"]
    assert message["blocks"][0]["type"] == "header"
    fields = [f["text"] for b in message["blocks"] if b["type"] == "section" for f in b.get("fields", [])]
    assert "*Threshold*\n50%" in fields
    assert headers["x-gatehouse-event"] == "budget_alert"


def test_a_request_the_guard_blocks_is_sent_to_the_request_blocked_webhook(env: Env) -> None:
    # the shipped default policy blocks secrets
    r = env.chat(content="my key is AKIAIOSFODNN7EXAMPLE and sk-proj-abcdefghijklmnopqrstuvwxyz0123456789ABCD")
    assert r.status_code == 400, r.text
    rid = r.headers["x-request-id"]
    _wait(lambda: env.blocks.answered(200), "no request_blocked delivery")
    sent = json.loads(env.blocks.answered(200)[0][1])
    assert sent["type"] == "request_blocked" and sent["data"]["request_id"] == rid
    assert "AKIA" not in env.blocks.answered(200)[0][1].decode()  # rules, never the text
    _deliveries(env, "blocks", "delivered")


def test_an_opened_circuit_breaker_is_sent_to_the_deployment_down_webhook(env: Env) -> None:
    for _ in range(6):  # five failures in a row open the breaker (routing.breaker.consecutive_failures)
        r = env.chat(model="down")
        assert r.status_code in (502, 503), r.text
    _wait(lambda: env.down.answered(200), "no deployment_down delivery")
    headers, payload, _ = env.down.answered(200)[0]
    assert headers["x-gatehouse-event"] == "deployment_down"
    message = json.loads(payload)
    assert set(message) == {"text", "blocks"} and "dead/gpt-nowhere" in message["text"]
    rows = _deliveries(env, "down", "delivered")
    assert len(rows) == 1 and rows[0][1] == "deployment_down"


def test_a_delivery_survives_a_restart_of_the_process_delivering_it(env: Env, alert: str) -> None:
    _wait(lambda: len(env.revived.posts) >= 2, "the revived webhook was never attempted")
    accounting = next(c for c in env.gov.stack.children if c.service == "accounting")
    assert accounting.process is not None
    os.kill(accounting.process.pid, signal.SIGKILL)
    accounting.process.wait(timeout=10)
    env.revived.failing = False  # the endpoint recovers while nobody delivers
    assert "accounting" in " ".join(env.gov.stack.supervise_once())
    rows = _deliveries(env, "revived", "delivered")
    assert len(rows) == 1 and str(rows[0][0]).startswith(alert)
    assert len(env.revived.answered(200)) == 1
