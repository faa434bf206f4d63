"""Failover under injected faults, through the dispatcher and the production upstream transport, against a
fault-injecting upstream over real HTTP: whenever some deployment can serve, the client gets a correct
answer; otherwise one clear error; and the attempts list says what happened to each try."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Iterator

import pytest
from starlette.applications import Starlette

from services.router.core import build_routes
from services.router.dispatch import Dispatcher
from services.router.health import HealthBoard
from services.router.providers.openai import OpenAITranslator
from services.router.upstream import Upstream
from shared.config import GatehouseConfig
from shared.schemas.chat import Caller, ChatRequest, Chunk, ChunkBatch, Reply, Result
from tests.emulators import faults
from tests.servers import serve_in_thread
from tests.unit.providers.roundtrip import canonical

ENV = {"FAULT_KEY": faults.API_KEY}


@pytest.fixture(scope="module")
def upstream_app() -> Iterator[tuple[Starlette, str]]:
    app = faults.create_app()
    with serve_in_thread(app) as url:
        yield app, url


def config(url: str, models: list[dict[str, object]], routing: dict[str, object] | None = None) -> GatehouseConfig:
    provider = {"kind": "openai", "api_base": f"{url}/v1", "api_key_env": "FAULT_KEY", "timeout_s": 2}
    return GatehouseConfig.model_validate(
        {
            "providers": {"p": provider},
            "models": models,
            "routing": {"backoff_base_s": 0.01, "backoff_max_s": 0.05, **(routing or {})},
        }
    )


def deps(*names: str, **extra: object) -> list[dict[str, object]]:
    return [{"provider": "p", "model": n, **extra} for n in names]


class Harness:
    def __init__(self, cfg: GatehouseConfig) -> None:
        self.cfg = cfg
        self.board = HealthBoard(cfg.routing, "test")
        self.upstream = Upstream()
        self.dispatcher = Dispatcher(
            build_routes(cfg, ENV), self.upstream, {"openai": OpenAITranslator()}, board=self.board,
            rng=random.Random(5),
        )  # fmt: skip

    async def ask(self, model: str, *, stream: bool = False, timeout_s: float = 20.0) -> list[Reply]:
        replies: list[Reply] = []

        async def send(reply: Reply) -> None:
            replies.append(reply)

        body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream}
        req = ChatRequest(
            request_id=f"r{time.monotonic_ns()}",
            api="chat",
            model=model,
            chat=canonical(body),
            caller=Caller(key_id="k"),
            stream=stream,
            include_usage=stream,
            deadline=time.time() + timeout_s,
        )
        await asyncio.wait_for(self.dispatcher.serve(req, send), timeout_s + 5)
        return replies

    async def close(self) -> None:
        await self.upstream.aclose()


def result_of(replies: list[Reply]) -> Result:
    last = replies[-1]
    assert isinstance(last, Result)
    return last


def text_of(replies: list[Reply]) -> str:
    out = ""
    for r in replies:
        items = [r.data] if isinstance(r, Chunk) else r.items if isinstance(r, ChunkBatch) else []
        for data in items:
            for choice in json.loads(data).get("choices", []):
                out += choice["delta"].get("content") or ""
    return out


@pytest.mark.parametrize(
    ("fault", "status", "code"),
    [
        ("fail:500", 502, "bad_gateway"),
        ("fail:503", 503, "service_unavailable"),
        ("429:0.05", 429, "rate_limit_exceeded"),
        ("garbage", 502, "bad_gateway"),
        ("hang", 504, "gateway_timeout"),
    ],
)
async def test_each_fault_fails_over_to_a_deployment_that_can_serve(
    upstream_app: tuple[Starlette, str], fault: str, status: int, code: str
) -> None:
    app, url = upstream_app
    name = fault.replace(":", "-").replace(".", "")
    faults.script(app, f"bad-{name}", [fault])
    h = Harness(config(url, [{"name": "m", "deployments": deps(f"bad-{name}", "good", timeout_s=0.5)}]))
    try:
        result = result_of(await h.ask("m"))
    finally:
        await h.close()
    assert result.error is None
    assert json.loads(result.body)["choices"][0]["message"]["content"] == "answer from good"
    attempts = [(a.deployment, a.status, a.error_code, a.route) for a in result.outcome.attempts]
    assert attempts == [(f"p/bad-{name}", status, code, "first"), ("p/good", 200, "", "failover")]
    assert result.outcome.deployment == "p/good" and result.outcome.model == "m"


async def test_fail_n_times_then_succeed_on_the_only_deployment_retries_with_backoff(
    upstream_app: tuple[Starlette, str],
) -> None:
    app, url = upstream_app
    faults.script(app, "flaky", ["fail:500", "fail:502"])
    h = Harness(config(url, [{"name": "m", "deployments": deps("flaky")}], {"backoff_base_s": 0.05}))
    try:
        result = result_of(await h.ask("m"))
    finally:
        await h.close()
    assert result.error is None
    assert [(a.status, a.route) for a in result.outcome.attempts] == [(502, "first"), (502, "retry"), (200, "retry")]
    delays = [a.retry_delay_ms for a in result.outcome.attempts]
    assert delays[0] == 0 and 0 <= delays[1] <= 50 and 0 <= delays[2] <= 100  # full jitter under the cap


async def test_when_nothing_can_serve_the_client_gets_one_clear_error_and_every_attempt_is_listed(
    upstream_app: tuple[Starlette, str],
) -> None:
    app, url = upstream_app
    faults.script(app, "down-a", [], default="fail:500")
    faults.script(app, "down-b", [], default="fail:503")
    h = Harness(config(url, [{"name": "m", "deployments": deps("down-a", "down-b")}], {"max_attempts": 4}))
    try:
        result = result_of(await h.ask("m"))
    finally:
        await h.close()
    assert result.error is not None and result.error.status == 503 and result.error.code == "service_unavailable"
    assert [(a.deployment, a.route) for a in result.outcome.attempts] == [
        ("p/down-a", "first"),
        ("p/down-b", "failover"),
        ("p/down-a", "retry"),
        ("p/down-b", "retry"),
    ]


async def test_a_429_retry_after_is_waited_for_when_short_and_cools_the_deployment_down(
    upstream_app: tuple[Starlette, str],
) -> None:
    app, url = upstream_app
    faults.script(app, "limited", ["429:0.3"])
    h = Harness(config(url, [{"name": "m", "deployments": deps("limited")}]))
    try:
        t0 = time.monotonic()
        result = result_of(await h.ask("m"))
        took = time.monotonic() - t0
        assert result.error is None and took >= 0.3
        assert [a.status for a in result.outcome.attempts] == [429, 200]
        assert result.outcome.attempts[1].retry_delay_ms >= 250
        # a long Retry-After is not waited for: the client hears it at once, and so does the next request
        faults.script(app, "limited", ["429:30"])
        first = result_of(await h.ask("m"))
        assert first.error is not None and first.error.status == 429 and first.error.retry_after == 30
        before = len(app.state.served["limited"])
        again = result_of(await h.ask("m"))
        assert again.error is not None and again.error.code == "rate_limit_exceeded"
        assert again.error.retry_after is not None and 28 < again.error.retry_after <= 30
        assert len(app.state.served["limited"]) == before  # cooling down: not called
        assert not again.outcome.attempts
    finally:
        await h.close()


async def test_a_slow_first_token_fails_over_but_a_long_stream_is_not_cut(
    upstream_app: tuple[Starlette, str],
) -> None:
    app, url = upstream_app
    faults.script(app, "sleepy", ["slow_first:1500"])
    faults.script(app, "long", [], default="drip:60")  # 40 chunks: 2.4 s, longer than ttft and timeout_s
    models = [
        {"name": "m", "deployments": deps("sleepy", "good", ttft_timeout_s=0.4)},
        {"name": "long", "deployments": deps("long", ttft_timeout_s=0.4, timeout_s=1)},
    ]
    h = Harness(config(url, models))
    try:
        replies = await h.ask("m", stream=True)
        result = result_of(replies)
        assert result.error is None and text_of(replies) == "answer from good "
        first = result.outcome.attempts[0]
        assert (first.status, first.error_code) == (504, "gateway_timeout") and "first token" in first.error_message
        assert 350 < first.latency_ms < 1200
        named = [r for r in replies if isinstance(r, Chunk | ChunkBatch) and r.deployment]
        assert len(named) == 1 and named[0].deployment == "p/good" and named[0].model == "m"
        replies = await h.ask("long", stream=True)
        result = result_of(replies)
        assert result.error is None and len(text_of(replies).split()) == 40
        assert result.outcome.attempts[0].ttft_ms < 400
    finally:
        await h.close()


async def test_a_stream_dropped_before_its_first_byte_fails_over_and_one_dropped_midway_ends_with_an_error(
    upstream_app: tuple[Starlette, str],
) -> None:
    app, url = upstream_app
    faults.script(app, "drops-first", ["drop_first"])
    faults.script(app, "drops-mid", ["drop_mid"])
    models = [
        {"name": "m", "deployments": deps("drops-first", "good")},
        {"name": "mid", "deployments": deps("drops-mid", "good")},
    ]
    h = Harness(config(url, models))
    try:
        replies = await h.ask("m", stream=True)
        result = result_of(replies)
        assert result.error is None and text_of(replies) == "answer from good "
        assert [a.status for a in result.outcome.attempts] == [502, 200]
        replies = await h.ask("mid", stream=True)
        result = result_of(replies)
        # bytes reached the client: never a retry after that, one clear error ends the stream
        assert result.error is not None and result.error.status == 502
        assert text_of(replies).startswith("w0 ") or text_of(replies).startswith("answer ")
        assert [(a.deployment, a.status) for a in result.outcome.attempts] == [("p/drops-mid", 502)]
    finally:
        await h.close()


async def test_context_window_and_content_policy_fallbacks_go_to_other_models(
    upstream_app: tuple[Starlette, str],
) -> None:
    app, url = upstream_app
    faults.script(app, "small-ctx", [], default="context")
    faults.script(app, "prude", [], default="refuse")
    models = [
        {
            "name": "small",
            "deployments": deps("small-ctx"),
            "context_window_fallbacks": ["large"],
            "content_policy_fallbacks": ["lenient"],
        },
        {"name": "strict", "deployments": deps("prude"), "content_policy_fallbacks": ["lenient"]},
        {"name": "large", "deployments": deps("large-ctx")},
        {"name": "lenient", "deployments": deps("lenient-model")},
    ]
    h = Harness(config(url, models))
    try:
        result = result_of(await h.ask("small"))
        assert result.error is None and json.loads(result.body)["model"] == "large-ctx"
        assert [(a.model, a.status, a.route) for a in result.outcome.attempts] == [
            ("small", 400, "first"),
            ("large", 200, "context_window_fallback"),
        ]
        assert result.outcome.model == "large"
        result = result_of(await h.ask("strict"))
        assert result.error is None and json.loads(result.body)["model"] == "lenient-model"
        assert [(a.status, a.error_code, a.route) for a in result.outcome.attempts] == [
            (200, "content_policy_violation", "first"),
            (200, "", "content_policy_fallback"),
        ]
    finally:
        await h.close()


async def test_the_breaker_opens_and_skips_the_deployment_then_a_probe_brings_it_back(
    upstream_app: tuple[Starlette, str],
) -> None:
    app, url = upstream_app
    faults.script(app, "broken", [], default="fail:500")
    breaker = {"consecutive_failures": 3, "cooldown_s": 0.5}
    h = Harness(config(url, [{"name": "m", "deployments": deps("broken", "good")}], {"breaker": breaker}))
    try:
        for _ in range(3):
            assert result_of(await h.ask("m")).error is None
        assert h.board.view("p/broken", time.time()).state == "open"
        calls = len(app.state.served["broken"])
        for _ in range(5):
            result = result_of(await h.ask("m"))
            assert [a.deployment for a in result.outcome.attempts] == ["p/good"]
        assert len(app.state.served["broken"]) == calls
        faults.script(app, "broken", [], default="ok")
        deadline = time.monotonic() + 5
        while h.board.view("p/broken", time.time()).state != "healthy" and time.monotonic() < deadline:
            result = result_of(await h.ask("m"))
            await asyncio.sleep(0.05)
        assert h.board.view("p/broken", time.time()).state == "healthy"
        assert result.outcome.attempts[0].route == "probe" and result.outcome.deployment == "p/broken"
    finally:
        await h.close()


async def test_lowest_latency_moves_most_traffic_to_the_faster_deployment(
    upstream_app: tuple[Starlette, str],
) -> None:
    app, url = upstream_app
    faults.script(app, "tortoise", [], default="slow:120")
    faults.script(app, "hare", [], default="slow:10")
    h = Harness(
        config(url, [{"name": "m", "deployments": deps("tortoise", "hare"), "routing": {"strategy": "latency"}}])
    )
    try:
        chosen = [result_of(await h.ask("m")).outcome.deployment for _ in range(40)]
    finally:
        await h.close()
    # two requests measure both; after that the explored share (5 %) is all the tortoise gets
    assert chosen[:2] == ["p/tortoise", "p/hare"] or chosen[:2] == ["p/hare", "p/tortoise"]
    assert chosen[10:].count("p/hare") >= 26, chosen


async def test_active_health_checks_open_a_breaker_without_client_traffic_and_close_it_again(
    upstream_app: tuple[Starlette, str],
) -> None:
    from services.router.probes import HealthChecker

    app, url = upstream_app
    faults.script(app, "checked", [], default="fail:503")
    cfg = config(
        url,
        [{"name": "m", "deployments": deps("checked")}],
        {"breaker": {"consecutive_failures": 2, "cooldown_s": 0.3}, "health_checks": {"interval_s": 0.05}},
    )
    h = Harness(cfg)
    checker = HealthChecker(h.dispatcher, build_routes(cfg, ENV), cfg.routing.health_checks)
    checker.start()
    try:
        deadline = time.monotonic() + 5
        while h.board.view("p/checked", time.time()).state != "open":
            assert time.monotonic() < deadline, "the checks never opened the breaker"
            await asyncio.sleep(0.02)
        faults.script(app, "checked", [], default="ok")
        while h.board.view("p/checked", time.time()).state != "healthy":
            assert time.monotonic() < deadline, "the checks never closed the breaker"
            await asyncio.sleep(0.02)
    finally:
        await checker.stop()
        await h.close()
    assert len(app.state.served["checked"]) >= 3  # all of it was the checker's own one-token requests
