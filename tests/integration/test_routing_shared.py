"""Deployment health shared by router replicas through NATS KV, against a real nats-server and real upstreams:
an outage one replica learns is respected by the other within a second, and under steady load, killing one
of three upstreams costs the clients nothing once the breaker is open; traffic returns after recovery."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field

import nats
import pytest
import uvicorn
from starlette.applications import Starlette

from gatehouse.natsserver import NatsServer, free_port
from services.router.core import build_routes
from services.router.dispatch import Dispatcher
from services.router.health import HealthBoard
from services.router.providers.openai import OpenAITranslator
from services.router.shared_health import SharedHealth
from services.router.upstream import Upstream
from shared.config import GatehouseConfig
from shared.schemas.chat import Caller, ChatRequest, Reply, Result
from shared.subjects import Subjects
from tests.emulators import faults
from tests.unit.providers.roundtrip import canonical

pytestmark = pytest.mark.timeout(120)
ENV = {"FAULT_KEY": faults.API_KEY}


@contextmanager
def serve(app: Starlette, port: int) -> Iterator[str]:
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "upstream did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def config(urls: list[str], strategy: str, breaker: dict[str, object]) -> GatehouseConfig:
    providers = {
        f"u{i}": {"kind": "openai", "api_base": f"{u}/v1", "api_key_env": "FAULT_KEY", "connect_timeout_s": 1}
        for i, u in enumerate(urls)
    }
    return GatehouseConfig.model_validate(
        {
            "providers": providers,
            "models": [
                {
                    "name": "m",
                    "deployments": [{"provider": f"u{i}", "model": "ok"} for i in range(len(urls))],
                    "routing": {"strategy": strategy},
                }
            ],
            "routing": {"backoff_base_s": 0.01, "backoff_max_s": 0.05, "breaker": breaker},
        }
    )


@dataclass
class Replica:
    name: str
    board: HealthBoard
    dispatcher: Dispatcher
    shared: SharedHealth
    upstream: Upstream
    nc: nats.NATS
    results: list[tuple[float, Result]] = field(default_factory=list)

    async def ask(self) -> Result:
        replies: list[Reply] = []

        async def send(reply: Reply) -> None:
            replies.append(reply)

        body = canonical({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
        req = ChatRequest(
            request_id=f"r{time.monotonic_ns()}", api="chat", model="m", chat=body, caller=Caller(key_id="k"),
            deadline=time.time() + 10,
        )  # fmt: skip
        await self.dispatcher.serve(req, send)
        result = replies[-1]
        assert isinstance(result, Result)
        self.results.append((time.monotonic(), result))
        return result


@asynccontextmanager
async def replicas(
    server: NatsServer, subjects: Subjects, cfg: GatehouseConfig, n: int = 2
) -> AsyncIterator[list[Replica]]:
    made: list[Replica] = []
    try:
        for i in range(n):
            nc = await nats.connect(server.url)
            board = HealthBoard(cfg.routing, f"replica-{i}")
            upstream = Upstream()
            dispatcher = Dispatcher(
                build_routes(cfg, ENV), upstream, {"openai": OpenAITranslator()}, board=board, rng=random.Random(i)
            )
            shared = SharedHealth(nc.jetstream(), subjects.routing_bucket, board)
            dispatcher.attach(shared)
            shared.start()
            await asyncio.wait_for(shared.synced.wait(), 10)
            made.append(Replica(f"replica-{i}", board, dispatcher, shared, upstream, nc))
        yield made
    finally:
        for r in made:
            await r.shared.stop()
            await r.upstream.aclose()
            await r.nc.close()


async def until(check: object, timeout: float) -> float:
    """Poll `check()` until true; the seconds it took (fails after `timeout`)."""
    t0 = time.monotonic()
    while not check():  # type: ignore[operator]
        assert time.monotonic() - t0 < timeout, "condition not reached in time"
        await asyncio.sleep(0.005)
    return time.monotonic() - t0


async def test_an_outage_learnt_by_one_replica_is_respected_by_the_other(
    nats_server: NatsServer, subjects: Subjects
) -> None:
    dead_app, good_app = faults.create_app(), faults.create_app()
    faults.script(dead_app, "ok", ["429:30"], default="fail:500")
    with serve(dead_app, free_port()) as dead, serve(good_app, free_port()) as good:
        cfg = config([dead, good], "priority", {"consecutive_failures": 3, "cooldown_s": 30})
        async with replicas(nats_server, subjects, cfg) as (a, b):
            # a 429 with Retry-After, learnt by A, cools the deployment down on B too
            assert (await a.ask()).error is None
            took = await until(lambda: b.board.view("u0/ok", time.time()).state == "cooldown", 1.0)
            assert took < 1.0
            assert 29 < b.board.view("u0/ok", time.time()).until - time.time() <= 30
            served = len(dead_app.state.served["ok"])
            for _ in range(10):
                result = await b.ask()
                assert result.error is None and [x.deployment for x in result.outcome.attempts] == ["u1/ok"]
            assert len(dead_app.state.served["ok"]) == served  # B sent nothing to the dead deployment
            # a breaker opened by B (failures in a row) is open on A within a second
            for r in (a, b):
                r.board.apply(msgspec_health("u0/ok", "healthy"))
            for _ in range(3):
                assert (await b.ask()).error is None
            assert b.board.view("u0/ok", time.time()).state == "open"
            assert await until(lambda: a.board.view("u0/ok", time.time()).state == "open", 1.0) < 1.0
            served = len(dead_app.state.served["ok"])
            await asyncio.gather(*(a.ask() for _ in range(10)))
            assert len(dead_app.state.served["ok"]) == served


def msgspec_health(deployment: str, state: str) -> object:
    from shared.schemas.routing import DeploymentHealth

    return DeploymentHealth(deployment=deployment, state=state, by="test", at=time.time())  # type: ignore[arg-type]


async def test_killing_one_of_three_upstreams_under_load_then_recovery(
    nats_server: NatsServer, subjects: Subjects
) -> None:
    apps = [faults.create_app() for _ in range(3)]
    ports = [free_port() for _ in range(3)]
    with serve(apps[0], ports[0]) as u0, serve(apps[2], ports[2]) as u2:
        victim = serve(apps[1], ports[1])
        u1 = victim.__enter__()
        cfg = config([u0, u1, u2], "weighted", {"consecutive_failures": 3, "cooldown_s": 1.0})
        async with replicas(nats_server, subjects, cfg) as reps:
            stop = asyncio.Event()
            errors: list[float] = []

            async def client(replica: Replica) -> None:
                while not stop.is_set():
                    result = await replica.ask()
                    if result.error is not None:
                        errors.append(time.monotonic())
                    await asyncio.sleep(0.01)

            load = [asyncio.create_task(client(reps[i % 2])) for i in range(6)]
            await asyncio.sleep(1.0)
            assert sum(len(r.results) for r in reps) > 20 and not errors
            victim.__exit__(None, None, None)  # the upstream dies: connections refused
            killed = time.monotonic()
            opened = killed + await until(
                lambda: all(r.board.view("u1/ok", time.time()).state != "healthy" for r in reps), 5.0
            )
            await asyncio.sleep(2.0)
            # recovery: the upstream comes back on its port; a probe (one request) closes the breaker
            with serve(apps[1], ports[1]):
                back = time.monotonic()
                await until(lambda: all(r.board.view("u1/ok", time.time()).state == "healthy" for r in reps), 10.0)
                await asyncio.sleep(1.0)
                stop.set()
                await asyncio.gather(*load)
            recovered_calls = [t for t in apps[1].state.served["ok"] if t > back]
    # no client saw an error: failover covered the outage, and the breaker kept it from costing attempts
    late = [t for t in errors if t > opened + 1.0]
    assert not late and not errors, (len(errors), len(late))
    wasted = [
        a
        for r in reps
        for t, res in r.results
        if opened + 1.0 < t < back
        for a in res.outcome.attempts
        if a.deployment == "u1/ok" and a.route != "probe"
    ]
    assert not wasted, wasted
    met = [a for r in reps for _, res in r.results for a in res.outcome.attempts if a.deployment == "u1/ok"]
    assert any(a.status >= 500 for a in met)  # the outage was met (and failed over) before the breaker opened
    assert len(recovered_calls) >= 3  # traffic returned to it
