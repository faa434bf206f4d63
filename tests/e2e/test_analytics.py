"""Analytics through the running stack: a team that opted in to content logging has its prompt and response
stored redacted (others have nothing stored), `gatehouse requests` / `gatehouse request <id>` tell a request's
story through the admin API, `gatehouse usage` groups by model and provider as CSV, and `gatehouse reprice` asks
accounting over NATS as the admin (a range whose prices did not change is left alone)."""

from __future__ import annotations

import json
import time

import httpx
import pytest
from typer.testing import CliRunner

from gatehouse.cli import app as cli
from tests.e2e.conftest import API_KEY, RunningStack

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]
EMAIL = "ana.lytics@example.com"


def admin(stack: RunningStack, method: str, path: str, body: object = None) -> httpx.Response:
    key = stack.stack.admin_key_file.read_text().strip()
    return httpx.request(
        method, f"{stack.stack.ingress_url}/admin/v1{path}", json=body, headers={"authorization": f"Bearer {key}"},
        timeout=30,
    )  # fmt: skip


def chat(stack: RunningStack, secret: str, text: str) -> httpx.Response:
    return httpx.post(
        f"{stack.base_url}/chat/completions",
        json={"model": "mock-1", "messages": [{"role": "user", "content": text}]},
        headers={"authorization": f"Bearer {secret}"},
        timeout=30,
    )


def poll(check: object, timeout: float = 30.0) -> object:
    deadline = time.monotonic() + timeout
    while True:
        value = check()  # type: ignore[operator]
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.3)


def test_content_logging_the_explorer_usage_and_reprice(running_stack: RunningStack) -> None:
    limits = {"log_content": True, "log_retention_days": 7, "policy": "pii-redact"}
    assert admin(running_stack, "POST", "/teams", {"id": "an-team", "limits": limits}).status_code == 201
    created = admin(running_stack, "POST", "/keys", {"team": "an-team", "id": "an-key"})
    assert created.status_code == 201, created.text
    secret = created.json()["secret"]
    answer = poll(lambda: (r := chat(running_stack, secret, f"please mail {EMAIL} today")).status_code == 200 and r)
    assert answer, "the new key was not usable in time"
    logged_id = answer.headers["x-request-id"]  # type: ignore[union-attr]
    plain = chat(running_stack, API_KEY, f"not logged {EMAIL}")
    assert plain.status_code == 200
    plain_id = plain.headers["x-request-id"]

    def story() -> dict[str, object] | None:
        r = admin(running_stack, "GET", f"/requests/{logged_id}")
        data = r.json() if r.status_code == 200 else None
        return data if data and len(data["content"]) == 2 else None

    found = poll(story)
    assert isinstance(found, dict), "the request and its content did not reach ClickHouse"
    assert found["request"]["team"] == "an-team" and found["request"]["guard_action"] == "redact"  # type: ignore[index]
    by_direction = {c["direction"]: c for c in found["content"]}  # type: ignore[union-attr]
    stored = json.dumps(by_direction)
    assert EMAIL not in stored and "<EMAIL_1>" in by_direction["input"]["texts.text"][0]
    assert by_direction["input"]["retention_days"] == 7 and by_direction["output"]["texts.text"]
    # the plain key logs nothing (off by default)
    running_stack.wait_rows(f"SELECT 1 FROM requests WHERE request_id = '{plain_id}'", 1)
    none = running_stack.sql(f"SELECT count() FROM request_content WHERE request_id = '{plain_id}'")
    assert none.rows == [[0]]

    runner = CliRunner()
    env = {"GATEHOUSE_ADMIN_KEY": running_stack.stack.admin_key_file.read_text().strip()}
    url = ["--url", running_stack.stack.ingress_url]
    out = runner.invoke(cli, ["requests", "--team", "an-team", "--since", "1h", "--format", "json", *url], env=env)
    assert out.exit_code == 0, out.output
    assert [r["request_id"] for r in json.loads(out.output)] == [logged_id]
    out = runner.invoke(cli, ["request", logged_id, *url], env={**env, "COLUMNS": "200"})
    assert out.exit_code == 0 and logged_id in out.output and "<EMAIL_1>" in out.output, out.output
    out = runner.invoke(cli, ["request", "no-such-request", *url], env=env)
    assert out.exit_code == 1 and "404" in out.output
    out = runner.invoke(cli, ["usage", "--team", "an-team", "--by", "model,provider", "--format", "csv", *url], env=env)
    assert out.exit_code == 0 and out.output.splitlines()[1].startswith("mock-1,mock,1,"), out.output
    data_dir = ["--data-dir", str(running_stack.stack.data_dir)]
    span = ["--from", str(time.time() - 3600), "--to", str(time.time() + 60)]
    out = runner.invoke(cli, ["reprice", *span, "--model", "mock-1", "--format", "json", *data_dir])
    assert out.exit_code == 0, out.output
    result = json.loads(out.output)
    assert result["rows"] >= 2 and result["changed"] == 0  # priced as before: nothing to do
