"""A running stack for the batch tests: the real launcher (five services, nats-server, chDB) on the mock
provider, with a slow model (for cancels) and a priced one (for budgets), helpers to kill and restart a
service, to read the records and counters, and a batch producer connection."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import nats

from gatehouse.batch import BatchClient
from gatehouse.launcher import Stack
from gatehouse.natsserver import free_port
from gatehouse.query import run_sql
from shared.config import hash_key
from shared.schemas.admin import SqlResult
from shared.subjects import Subjects

KEY = "sk-e2e-batch-key-0001"
PRICE = "{input_per_mtok: 0, output_per_mtok: 1000000}"  # $1 per output token, input free


def config_text() -> str:
    return f"""
server: {{host: 127.0.0.1, port: 0, request_timeout_s: 30, heartbeat_timeout_s: 3}}
keys:
  - {{id: batchkey, sha256: {hash_key(KEY)}, team: qa, project: batch}}
providers:
  mock: {{kind: mock}}
  slow: {{kind: mock, mock_latency_ms: 150}}
models:
  - name: mock-1
    deployments: [{{provider: mock, model: mock-1}}]
  - name: slow-1
    deployments: [{{provider: slow, model: slow-1}}]
  - name: priced
    max_output_tokens: 64
    deployments: [{{provider: mock, model: priced, price: {PRICE}}}]
governance:
  reservation_grace_s: 5
accounting:
  flush_interval_s: 0.2
batch:
  job_concurrency: 64
"""


@dataclass
class BatchStack:
    stack: Stack

    @property
    def url(self) -> str:
        return self.stack.ingress_url

    @property
    def nats_url(self) -> str:
        assert self.stack.nats is not None
        return self.stack.nats.url

    @property
    def subjects(self) -> Subjects:
        return Subjects(self.stack.prefix)

    async def producer(self) -> BatchClient:
        """A connection as the batch producer role (its own credential), once a batch replica answers."""
        seed = str(self.stack.credentials["batch_producer"].seed_file)
        client = await BatchClient.connect(self.nats_url, seed_file=seed, prefix=self.stack.prefix, timeout_s=60)
        await client.ready(60)
        return client

    # ---- processes ------------------------------------------------------------------------------
    def kill(self, service: str) -> None:
        """SIGKILL every replica of `service`, then wait until the launcher has restarted them."""
        children = [c for c in self.stack.children if c.service == service]
        for child in children:
            assert child.process is not None
            child.process.send_signal(signal.SIGKILL)
            child.process.wait(10)
        deadline = time.monotonic() + 30
        while any(c.process is None or c.process.poll() is not None for c in children):
            self.stack.supervise_once()
            assert time.monotonic() < deadline, f"{service} was not restarted"
            time.sleep(0.1)

    # ---- records ------------------------------------------------------------------------------------
    def sql(self, query: str) -> SqlResult:
        seed = str(self.stack.admin_seed_file)
        return asyncio.run(run_sql(self.nats_url, self.stack.prefix, query, 30, seed))

    def wait_value(self, query: str, expected: object, timeout: float = 120.0) -> object:
        """Poll a one-value query until it returns `expected` (records land asynchronously, and accounting
        may be restarting); returns the last value seen."""
        deadline = time.monotonic() + timeout
        value: object = None
        while True:
            try:
                result = self.sql(query)
                if not result.error and result.rows:
                    value = result.rows[0][0] if len(result.rows[0]) == 1 else result.rows[0]
            except Exception:
                value = None
            if value == expected or time.monotonic() > deadline:
                return value
            time.sleep(0.5)

    def counter(self, subject: str) -> int:
        async def read() -> int:
            nc = await nats.connect(
                self.nats_url,
                nkeys_seed=str(self.stack.admin_seed_file),
                inbox_prefix=self.subjects.role_inbox("admin").encode(),
            )
            try:
                msg = await nc.jetstream().get_last_msg(self.subjects.counters_stream, subject)
                return int(json.loads(msg.data)["val"])
            except nats.js.errors.NotFoundError:
                return 0
            finally:
                await nc.close()

        return asyncio.run(read())

    # ---- admin API ------------------------------------------------------------------------------------
    def admin(self, method: str, path: str, body: object = None) -> dict[str, object]:
        key = self.stack.admin_key_file.read_text().strip()
        r = httpx.request(
            method, f"{self.url}/admin/v1{path}", json=body, headers={"authorization": f"Bearer {key}"}, timeout=30
        )
        assert r.status_code < 300, r.text
        data = r.json()
        assert isinstance(data, dict)
        return data


@contextmanager
def batch_stack(tmp: Path, prefix: str) -> Iterator[BatchStack]:
    config = tmp / "gatehouse.yaml"
    config.write_text(config_text())
    saved = os.environ.get("GATEHOUSE_ROUTER_HEARTBEAT_S")
    os.environ["GATEHOUSE_ROUTER_HEARTBEAT_S"] = "1"  # below the 3 s heartbeat timeout: a dead router shows fast
    stack = Stack(
        config=config, data_dir=tmp / "data", host="127.0.0.1", port=free_port(), prefix=prefix, nats_port=free_port()
    )
    try:
        stack.start()
        if not stack.wait_ready(90):
            logs = "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in (tmp / "data" / "logs").glob("*.log"))
            raise AssertionError(f"stack did not become ready:\n{logs}")
        yield BatchStack(stack)
    finally:
        stack.stop()
        if saved is None:
            os.environ.pop("GATEHOUSE_ROUTER_HEARTBEAT_S", None)
        else:
            os.environ["GATEHOUSE_ROUTER_HEARTBEAT_S"] = saved
