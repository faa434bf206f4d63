"""A running stack with two ingress replicas and priced mock models, for the governance tests: the admin
API, request helpers that alternate replicas, and reads of the counters and records."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import nats

from gatehouse.launcher import Stack
from gatehouse.natsserver import free_port
from gatehouse.query import run_sql
from shared.config import hash_key
from shared.schemas.admin import SqlResult
from shared.subjects import Subjects

PLAIN_KEY = "sk-gov-plain-key-0001"
# $1 per output token, input free: a request with max_tokens=10 costs (and reserves) exactly $10
PRICE = "{input_per_mtok: 0, output_per_mtok: 1000000}"
LONG_PROMPT = "please count the words of this sentence slowly and carefully one by one"  # 13 words


def config_text(webhook_url: str = "") -> str:
    webhook = f"\n  alert_webhook_url: {webhook_url}" if webhook_url else ""
    return f"""
server: {{host: 127.0.0.1, port: 0, request_timeout_s: 8}}
keys:
  - {{id: plain, sha256: {hash_key(PLAIN_KEY)}}}
providers:
  mock: {{kind: mock}}
  slow: {{kind: mock, mock_chunk_delay_ms: 400}}
models:
  - name: mock-1
    deployments: [{{provider: mock, model: mock-1}}]
  - name: priced
    max_output_tokens: 64
    deployments: [{{provider: mock, model: priced, price: {PRICE}}}]
  - name: priced-slow
    max_output_tokens: 64
    deployments: [{{provider: slow, model: priced-slow, price: {PRICE}}}]
governance:
  reservation_grace_s: 1{webhook}
accounting:
  flush_interval_s: 0.2
"""


def _port_pair() -> int:
    """A free port whose successor is free too (ingress replicas listen on port, port+1)."""
    for _ in range(50):
        port = free_port()
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no pair of free ports")


@contextmanager
def governed_stack(tmp: Path, prefix: str, webhook_url: str = "") -> Iterator[Gov]:
    config = tmp / "gatehouse.yaml"
    config.write_text(config_text(webhook_url))
    stack = Stack(
        config=config,
        data_dir=tmp / "data",
        host="127.0.0.1",
        port=_port_pair(),
        prefix=prefix,
        nats_port=free_port(),
        replicas={"ingress": 2},
    )
    stack.start()
    try:
        if not stack.wait_ready(90):
            logs = "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in (tmp / "data" / "logs").glob("*.log"))
            raise AssertionError(f"stack did not become ready:\n{logs}")
        yield Gov(stack)
    finally:
        stack.stop()


@dataclass
class Gov:
    stack: Stack

    @property
    def urls(self) -> list[str]:
        return self.stack.ingress_urls

    @property
    def admin_key(self) -> str:
        return self.stack.admin_key_file.read_text().strip()

    # ---- admin API ------------------------------------------------------------------------------
    def admin(
        self, method: str, path: str, body: object = None, key: str | None = None, replica: int = 0
    ) -> httpx.Response:
        return httpx.request(
            method,
            f"{self.urls[replica]}/admin/v1{path}",
            json=body,
            headers={"authorization": f"Bearer {key or self.admin_key}"},
            timeout=30,
        )

    def ok(self, method: str, path: str, body: object = None, key: str | None = None) -> dict[str, object]:
        r = self.admin(method, path, body, key)
        assert r.status_code < 300, r.text
        data = r.json()
        assert isinstance(data, dict)
        return data

    def team(self, team_id: str, **limits: object) -> None:
        self.ok("POST", "/teams", {"id": team_id, "limits": limits})

    def key(self, team: str, **fields: object) -> tuple[str, str]:
        """(key id, secret) of a new key."""
        data = self.ok("POST", "/keys", {"team": team, **fields})
        return str(data["id"]), str(data["secret"])

    def wait_key(self, secret: str, status: int = 200, timeout: float = 5.0) -> float:
        """Poll every replica until the key gets `status` on /v1/models; seconds it took."""
        start = time.monotonic()
        pending = list(self.urls)
        while pending:
            r = httpx.get(f"{pending[0]}/v1/models", headers={"authorization": f"Bearer {secret}"}, timeout=10)
            if r.status_code == status:
                pending.pop(0)
                continue
            if time.monotonic() - start > timeout:
                raise AssertionError(f"{pending[0]}: {r.status_code} after {timeout}s, waiting for {status}")
            time.sleep(0.02)
        return time.monotonic() - start

    # ---- requests -------------------------------------------------------------------------------
    async def burst(
        self, secret: str, count: int, model: str = "priced", max_tokens: int = 10, stream: bool = False
    ) -> list[httpx.Response]:
        """`count` requests at once, alternating replicas."""
        body: dict[str, object] = {
            "model": model,
            "messages": [{"role": "user", "content": LONG_PROMPT}],
            "max_tokens": max_tokens,
        }
        if stream:
            body["stream"] = True
        limits = httpx.Limits(max_connections=count, max_keepalive_connections=count)
        async with httpx.AsyncClient(timeout=60, limits=limits) as client:
            calls = [
                client.post(
                    f"{self.urls[i % len(self.urls)]}/v1/chat/completions",
                    json=body,
                    headers={"authorization": f"Bearer {secret}"},
                )
                for i in range(count)
            ]
            return list(await asyncio.gather(*calls))

    # ---- records and counters -------------------------------------------------------------------
    def sql(self, query: str) -> SqlResult:
        assert self.stack.nats is not None
        return asyncio.run(run_sql(self.stack.nats.url, self.stack.prefix, query, 30, str(self.stack.admin_seed_file)))

    def wait_count(self, query: str, count: int, timeout: float = 60.0) -> int:
        """Poll a `SELECT count() …` until it reaches `count` (records land asynchronously; accounting may
        be restarting, which the poll rides out)."""
        deadline = time.monotonic() + timeout
        value = -1
        while True:
            try:
                result = self.sql(query)
            except Exception:
                result = None
            if result is not None:
                assert not result.error, result.error
                value = int(result.rows[0][0])  # type: ignore[call-overload]
            if value >= count or time.monotonic() > deadline:
                return value
            time.sleep(0.3)

    def counter(self, subject: str) -> int:
        """A counter's value, read by the admin identity (a direct get of its last message)."""
        assert self.stack.nats is not None

        async def read() -> int:
            nc = await nats.connect(
                self.stack.nats.url,
                nkeys_seed=str(self.stack.admin_seed_file),
                inbox_prefix=Subjects(self.stack.prefix).role_inbox("admin").encode(),
            )
            try:
                stream = Subjects(self.stack.prefix).counters_stream
                try:
                    msg = await nc.jetstream().get_last_msg(stream, subject)
                except nats.js.errors.NotFoundError:
                    return 0
                return int(json.loads(msg.data)["val"])
            finally:
                await nc.close()

        return asyncio.run(read())

    def reservation_state(self, request_id: str) -> str:
        """The last state of a request's budget reservation (live, settled, released; '' if none)."""
        assert self.stack.nats is not None
        subjects = Subjects(self.stack.prefix)

        async def read() -> str:
            nc = await nats.connect(
                self.stack.nats.url,
                nkeys_seed=str(self.stack.admin_seed_file),
                inbox_prefix=subjects.role_inbox("admin").encode(),
            )
            try:
                subject = subjects.reservation(request_id)
                try:
                    msg = await nc.jetstream().get_last_msg(subjects.reservations_stream, subject.name)
                except nats.js.errors.NotFoundError:
                    return ""
                return subject.decode(msg.data).state
            finally:
                await nc.close()

        return asyncio.run(read())

    def subjects(self) -> Subjects:
        return Subjects(self.stack.prefix)
