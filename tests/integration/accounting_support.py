"""Shared by the accounting integration tests: events, the service as a child process, queries through it."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from gatehouse.query import run_sql
from shared.schemas.chat import Caller, Usage
from shared.schemas.events import RequestEvent
from shared.subjects import Subjects

REPO = Path(__file__).resolve().parents[2]
# what a query says while the service answers but has not applied the schema yet
_NOT_YET = re.compile(r"Unknown table|UNKNOWN_TABLE|does not exist", re.IGNORECASE)


def make_event(event_id: str, **kw: object) -> RequestEvent:
    now = time.time()
    fields: dict[str, object] = {
        "event_id": event_id,
        "request_id": event_id,
        "api": "chat",
        "caller": Caller(key_id="k1", team="t1"),
        "requested_model": "mock-1",
        "provider": "mock",
        "deployment": "mock/mock-1",
        "provider_model": "mock-1",
        "status": 200,
        "usage": Usage(input_tokens=5, output_tokens=7),
        "received_at": now,
        "finished_at": now + 0.01,
        "latency_ms": 10.0,
    }
    fields.update(kw)
    return RequestEvent(**fields)  # type: ignore[arg-type]


class AccountingProcess:
    """`python -m services.accounting` as a child process, configured only through its environment."""

    def __init__(self, nats_url: str, subjects: Subjects, data: Path, **env: str) -> None:
        self.env = {
            **os.environ,
            "GATEHOUSE_ACCOUNTING_NATS_URL": nats_url,
            "GATEHOUSE_ACCOUNTING_CONFIG": str(REPO / "deploy" / "gatehouse.yaml"),
            "GATEHOUSE_ACCOUNTING_SUBJECT_PREFIX": subjects.prefix,
            "GATEHOUSE_ACCOUNTING_CLICKHOUSE_DSN": f"chdb://{data / 'clickhouse'}",
            **env,
        }
        self.log = data / "accounting.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "services.accounting"], env=self.env, cwd=REPO, stdout=out, stderr=out
            )

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> int | None:
        """SIGTERM, as the launcher and Kubernetes stop it; returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


# how long a just-started accounting process may take to answer (Python, chDB and migrations): over 30 s was seen
# with the load average at 21 on 2 cores
STARTUP_S = 60.0


async def sql(url: str, subjects: Subjects, query: str, timeout: float = STARTUP_S) -> list[list[object]]:
    """Rows of a query answered by the accounting service, waiting until it answers (it may be starting)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = await run_sql(url, subjects.prefix, query, timeout=5)
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.3)
            continue
        if result.error and _NOT_YET.search(result.error) and time.monotonic() < deadline:
            await asyncio.sleep(0.3)  # answering already, schema not applied yet
            continue
        assert not result.error, result.error
        return result.rows


def first_int(rows: list[list[object]]) -> int:
    """The single number a count() query returns."""
    value = rows[0][0]
    assert isinstance(value, int), rows
    return value


async def wait_count(url: str, subjects: Subjects, query: str, expected: int, timeout: float = STARTUP_S) -> int:
    """Poll a count() query until it reaches `expected` (or the timeout); returns the last count."""
    deadline = time.monotonic() + timeout
    while True:
        # the service may still be starting (a Python, chDB and migrations start): it has this wait's whole time
        count = first_int(await sql(url, subjects, query, timeout=max(deadline - time.monotonic(), 5.0)))
        if count >= expected or time.monotonic() > deadline:
            return count
        await asyncio.sleep(0.3)
