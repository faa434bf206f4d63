"""Serve one request: order its model's deployments by the routing strategy, then attempt them (retries with
backoff, failover, fallbacks to other models) until one answers, the budget or the deadline runs out, or a
byte reached the client; breakers and cooldowns (services.router.health) decide what may be tried."""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import Callable, Mapping, Sequence

import msgspec

from services.router import native, plan, strategies
from services.router.attempt import AttemptRunner, DeadlineReached, Progress, Send
from services.router.core import Deployment, Route, attempt_error, attempt_message, resolve
from services.router.health import HealthBoard
from services.router.providers.base import Translator
from services.router.retry import REFUSALS, backoff_s, classify, rate_limits
from services.router.shared_health import SharedHealth
from services.router.strategies import Option
from services.router.telemetry import AttemptTrace, attempt_started
from services.router.upstream import Upstream
from shared.bus import split_result
from shared.errors import (
    CLIENT_CLOSED,
    ContentPolicyViolation,
    GatewayError,
    GatewayTimeoutError,
    InvalidRequestError,
    RateLimitError,
    ServiceUnavailableError,
)
from shared.routing_config import STRATEGIES, RoutingConfig
from shared.schemas.chat import Attempt, Caller, ChatRequest, Outcome, Reply, Result, Usage
from shared.schemas.openai import ChatCompletionRequest, chat_from_builtins
from shared.tokens import estimate_prompt_tokens

log = logging.getLogger(__name__)

# how long other replicas leave a half-open deployment to the one probing it
PROBE_LEASE_S = 30.0
# the output a request that names no max_tokens is priced at by the cost strategy
DEFAULT_OUTPUT_TOKENS = 256


class _Run:
    """The state of one request while the dispatcher works through its plan."""

    def __init__(
        self,
        req: ChatRequest,
        route: Route,
        order: Callable[[Route], Sequence[Deployment]],
        candidates: list[plan.Candidate],
        strategy: str,
    ) -> None:
        self.req = req
        self.route = route
        self.order = order
        self.plan = candidates
        self.strategy = strategy
        self.used: set[str] = {"primary", "fallback"}
        self.budget = route.attempt_budget
        self.failed: dict[str, int] = {}  # deployment → failures in this request
        self.attempts: list[Attempt] = []
        self.last: GatewayError | None = None
        self.last_dep = route.deployments[0]
        self.last_model = route.model.name
        self.progress = Progress()
        self.delay_ms = 0.0  # waited before the next attempt (backoff, Retry-After)
        self.current: Deployment | None = None  # the deployment of the attempt under way
        self.probing = False
        self.started = time.monotonic()
        self.trace: AttemptTrace | None = None  # the telemetry of the attempt under way


class Dispatcher:
    def __init__(
        self,
        routes: Mapping[str, Route],
        upstream: Upstream,
        translators: Mapping[str, Translator],
        replica: str = "",
        *,
        board: HealthBoard | None = None,
        shared: SharedHealth | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._routes = routes
        self._replica = replica  # named in every Outcome, so a record says which router replica served it
        self._runner = AttemptRunner(upstream, translators)
        self.board = board or HealthBoard(RoutingConfig(), "local")
        self._shared = shared
        self._rng = rng or random.Random()  # noqa: S311 - load spreading, not cryptography
        for route in routes.values():
            for dep in route.deployments:
                self.board.register(dep.id, dep.target.provider, route.model.name)

    @property
    def replica(self) -> str:
        return self._replica

    def attach(self, shared: SharedHealth) -> None:
        """Share deployment health with the other replicas (and claim probes through it)."""
        self._shared = shared

    # ---- the plan ---------------------------------------------------------------------------------
    def _order(self, req: ChatRequest, strategy: str) -> Callable[[Route], Sequence[Deployment]]:
        now = time.time()

        def order(route: Route) -> Sequence[Deployment]:
            chosen = strategy or route.policy.strategy
            deps = route.deployments
            if chosen == "priority" or len(deps) <= 1:
                return deps
            prompt = estimate_prompt_tokens(req.chat) if chosen == "cost" and req.chat is not None else 0
            output = (_max_output(req.chat) if req.chat is not None else None) or DEFAULT_OUTPUT_TOKENS
            options = []
            for dep in deps:
                stats = self.board.stats(dep.id)
                price = None
                if chosen == "cost" and dep.rates is not None:
                    price = dep.rates[0] * prompt + dep.rates[1] * output
                options.append(
                    Option(
                        weight=dep.weight,
                        ewma_ms=stats.ewma(req.stream),
                        inflight=stats.inflight,
                        price=price,
                        capacity=stats.limits.capacity(now) if stats.limits else 1.0,
                    )
                )
            return [deps[i] for i in strategies.order(chosen, options, self._rng, route.policy.explore)]

        return order

    async def serve(self, req: ChatRequest, send: Send) -> None:
        started = time.monotonic()
        try:
            route = resolve(self._routes, req.model, req.api)
            if (req.api == "embeddings" and req.embeddings is None) or (req.api != "embeddings" and req.chat is None):
                raise InvalidRequestError("The request has no body to route.")
            if req.deadline and time.time() >= req.deadline:
                raise GatewayTimeoutError("The request's deadline passed before it could be dispatched.")
        except GatewayError as exc:
            await send(Result(outcome=Outcome(replica=self._replica), error=exc.info()))
            return
        strategy = req.route if req.route in STRATEGIES else ""
        order = self._order(req, strategy)
        run = _Run(req, route, order, plan.candidates(route, self._routes, order), strategy or route.policy.strategy)
        run.started = started
        try:
            while len(run.attempts) < run.budget:
                choice = await self._next(run)
                if choice is None:
                    break
                verdict = await self._try(run, choice, send)
                if verdict == "answered":
                    return
                if verdict == "stop":
                    break
        except asyncio.CancelledError:
            await self._cancelled(run, send)
            raise
        await send(self._failure(run))

    async def _next(self, run: _Run) -> plan.Pick | None:
        """The next deployment to try, after any wait it needs (backoff, a near Retry-After); None: give up."""
        req, policy = run.req, run.route.policy
        while True:
            now = time.time()
            if req.deadline and now >= req.deadline:
                run.last = run.last or GatewayTimeoutError(
                    "The request's deadline passed before a deployment answered."
                )
                return None
            choice = plan.pick(
                run.plan,
                run.failed,
                lambda dep_id, now=now: self.board.availability(dep_id, now),  # type: ignore[misc]  # bound now
                lambda dep_id: self.board.blocked(dep_id)[:2],
                lambda dep: native.may_serve(req.native, dep),
            )
            if isinstance(choice, plan.Blocked):
                wait = choice.until - now if choice.until else -1.0
                if 0 <= wait <= policy.max_retry_wait_s and not (req.deadline and choice.until >= req.deadline):
                    await asyncio.sleep(wait)  # the earliest deployment back (a Retry-After) is near: wait for it
                    run.delay_ms += wait * 1000
                    continue
                if run.last is None and choice.until:
                    run.last = _unavailable(run.route.model.name, choice, now)
                return None  # (until 0: no deployment may serve this request at all)
            if choice.retry:
                wait = backoff_s(choice.retry - 1, policy.backoff_base_s, policy.backoff_max_s, self._rng)
                if req.deadline:
                    wait = min(wait, max(req.deadline - time.time(), 0.0))
                await asyncio.sleep(wait)
                run.delay_ms += wait * 1000
            if choice.probe and not await self._claim(choice.candidate.deployment.id):
                continue  # another replica probes it
            return choice

    async def _try(self, run: _Run, choice: plan.Pick, send: Send) -> str:
        """One attempt: "answered", "next" (try again), or "stop"."""
        cand, req = choice.candidate, run.req
        dep = cand.deployment
        why = _why(cand, choice, run.attempts)
        run.last_dep, run.last_model, run.current, run.probing = dep, cand.model, dep, choice.probe
        progress = run.progress = Progress(dep.id, cand.model)
        t0 = time.monotonic()
        self.board.begin(dep.id)
        run.trace = attempt_started(req, dep, run.started)
        try:
            result = await self._runner.timed(req, dep, send, progress, run.started, probe=choice.probe)
        except DeadlineReached:
            run.last = GatewayTimeoutError(f"The request's deadline passed while deployment {dep.id} was answering.")
            self._record(run, cand, why, t0, run.last.status, run.last)
            self._failed(dep, run.last, "retryable", t0, progress)
            return "stop"
        except GatewayError as exc:
            run.last = attempt_error(exc, dep.target)
        except Exception as exc:  # a translator bug must not leave the client hanging
            log.exception("request %s: attempt on %s failed unexpectedly", req.request_id, dep.id)
            run.last = GatewayError(f"Internal error while calling {dep.id}: {type(exc).__name__}")
        else:
            refused = progress.finish_reason in REFUSALS and not progress.sent
            if refused and cand.group != "content_policy_fallback" and run.route.model.content_policy_fallbacks:
                # a refusal answered with 200: another model may answer it (nothing reached the client yet)
                run.last = ContentPolicyViolation(f"Deployment {dep.id} refused the request.")
                self._record(run, cand, why, t0, 200, run.last)
                self._done(dep, progress, t0)
                return "next" if self._fall_back(run, "content_policy_fallback") else "stop"
            self._record(run, cand, why, t0, 200, None)
            self._done(dep, progress, t0, success=True)
            outcome = self._outcome(run, dep, progress, cand.model)
            for piece in split_result(Result(outcome=outcome, body=result, native=progress.native)):
                await send(piece)
            return "answered"
        last = run.last
        self._record(run, cand, why, t0, last.status, last)
        kind = classify(last)
        self._failed(dep, last, kind, t0, progress)
        if progress.sent:
            return "stop"  # never again once a byte reached the client
        if kind == "context_window":
            return "next" if self._fall_back(run, "context_window_fallback") else "stop"
        if kind == "content_policy":
            return "next" if self._fall_back(run, "content_policy_fallback") else "stop"
        if kind == "fatal":
            return "stop"
        run.failed[dep.id] = run.failed.get(dep.id, 0) + 1
        return "next"

    def _record(
        self, run: _Run, cand: plan.Candidate, why: str, t0: float, status: int, error: GatewayError | None
    ) -> None:
        dep = cand.deployment
        run.attempts.append(_attempt_record(dep, status, t0, error, cand.model, why, run.delay_ms, run.progress))
        if run.trace is not None:  # the attempt's span and metrics
            run.trace.end(status, error, run.progress.ttft_ms)
            run.trace = None
        run.delay_ms = 0.0
        run.current = None
        run.probing = False

    def _fall_back(self, run: _Run, group: plan.Group) -> bool:
        """Replace the plan by a context-window or content-policy fallback (each kind once); False: none."""
        if group in run.used:
            return False
        run.used.add(group)
        run.plan = plan.fallback(run.route, self._routes, run.order, group)
        # a fallback for the prompt's size or content is a new plan: it gets its try even on a spent budget
        run.budget = max(run.budget, len(run.attempts) + 1)
        return bool(run.plan)

    async def _cancelled(self, run: _Run, send: Send) -> None:
        """The client went away: the upstream call is closed by now; say what it cost so far."""
        if run.current is not None:
            self.board.end(run.current.id)
            if run.probing:
                self.board.release(run.current.id)
        run.attempts.append(
            _attempt_record(run.last_dep, CLIENT_CLOSED.status, run.started, None, run.last_model, "cancel")
        )
        outcome = self._outcome(run, run.last_dep, run.progress, run.last_model)
        if outcome.usage is None:
            outcome = msgspec.structs.replace(outcome, usage=_estimate(run.req, run.progress), usage_estimated=True)
        await send(Result(outcome=outcome, error=CLIENT_CLOSED))

    async def check(self, route: Route, dep_id: str, timeout_s: float) -> bool | None:
        """An active health check of one deployment (a one-token request); None when it was not due
        (its breaker is open and not cooled down, or another replica holds the probe)."""
        dep = next(d for d in route.deployments if d.id == dep_id)
        availability = self.board.availability(dep_id, time.time())
        if availability == "no" or (availability == "probe" and not await self._claim(dep_id)):
            return None
        chat = chat_from_builtins(
            {"model": route.model.name, "messages": [{"role": "user", "content": "ping"}], "max_tokens": 1}
        )
        req = ChatRequest(
            request_id=f"healthcheck-{dep_id}",
            api="chat",
            model=route.model.name,
            caller=Caller(key_id="gatehouse-healthcheck"),
            chat=chat,
            deadline=time.time() + timeout_s,
        )
        progress = Progress(dep_id, route.model.name)
        t0 = time.monotonic()
        self.board.begin(dep_id)

        async def discard(_: Reply) -> None:
            return None

        try:
            await self._runner.timed(req, dep, discard, progress, t0)
        except (GatewayError, DeadlineReached) as exc:
            error = exc if isinstance(exc, GatewayError) else GatewayTimeoutError("health check timed out")
            kind = classify(error)
            self._failed(dep, error, kind, t0, progress)  # a 400 still says the deployment is alive
            return False
        except asyncio.CancelledError:
            self.board.end(dep_id)
            self.board.release(dep_id)
            raise
        self._done(dep, progress, t0, success=True)
        return True

    async def _claim(self, dep_id: str) -> bool:
        health = self.board.claim(dep_id, time.time(), PROBE_LEASE_S)
        if self._shared is None:
            return True
        if await self._shared.claim(health):
            return True
        self.board.release(dep_id)
        return False

    def _done(self, dep: Deployment, progress: Progress, t0: float, *, success: bool = False) -> None:
        now = time.time()
        self.board.end(dep.id)
        self.board.observe_limits(dep.id, rate_limits(progress.headers, now))
        latency_ms = (time.monotonic() - t0) * 1000
        self.board.success(dep.id, now, latency_ms, progress.attempt_ttft_ms if success and progress.sent else None)

    def _failed(self, dep: Deployment, error: GatewayError, kind: str, t0: float, progress: Progress) -> None:
        now = time.time()
        self.board.end(dep.id)
        self.board.observe_limits(dep.id, rate_limits(progress.headers, now))
        latency_ms = (time.monotonic() - t0) * 1000
        if kind == "rate_limited":
            self.board.rate_limited(dep.id, now, error.retry_after, error.message[:200])
        elif kind == "retryable":
            self.board.failure(dep.id, now, f"{error.info().code}: {error.message}"[:200], latency_ms)
        else:
            # the deployment answered (the request was the problem): it is alive
            self.board.success(dep.id, now, latency_ms, None)

    def _failure(self, run: _Run) -> Result:
        """The Result when no attempt succeeded (`native`: the provider's own error already reached the client)."""
        req = run.req
        if not run.attempts and req.native is not None and run.last is None:
            return Result(outcome=Outcome(replica=self._replica), error=native.unserved(req.native, req.model).info())
        error = run.last.info() if run.last else GatewayError("No deployment could serve the request.").info()
        outcome = self._outcome(run, run.last_dep, Progress(), run.last_model)
        return Result(outcome=outcome, error=error, native=run.progress.relayed_error)

    def _outcome(self, run: _Run, dep: Deployment, progress: Progress, model: str) -> Outcome:
        return Outcome(
            provider=dep.target.provider,
            provider_kind=dep.target.kind,
            deployment=dep.id,
            provider_model=dep.target.model,
            usage=progress.usage,
            finish_reason=progress.finish_reason,
            attempts=run.attempts,
            upstream_ms=(time.monotonic() - run.started) * 1000,
            ttft_ms=progress.ttft_ms,
            replica=self._replica,
            model=model,
            strategy=run.strategy,
        )


def _attempt_record(
    dep: Deployment,
    status: int,
    t0: float,
    error: GatewayError | None,
    model: str,
    why: str,
    delay_ms: float = 0.0,
    progress: Progress | None = None,
) -> Attempt:
    return Attempt(
        provider=dep.target.provider,
        deployment=dep.id,
        status=status,
        latency_ms=(time.monotonic() - t0) * 1000,
        error_code=error.info().code if error else "",
        error_message=attempt_message(error) if error else "",
        model=model,
        route=why,
        retry_delay_ms=round(delay_ms, 3),
        ttft_ms=round(progress.attempt_ttft_ms, 3) if progress is not None and progress.sent else 0.0,
    )


def _why(cand: plan.Candidate, choice: plan.Pick, attempts: list[Attempt]) -> str:
    """Why this attempt is made, for the record."""
    if choice.probe:
        return "probe"
    if cand.group != "primary":
        return cand.group
    if not attempts:
        return "first"
    return "retry" if choice.retry else "failover"  # a second try of one deployment, or the next one


def _unavailable(model: str, blocked: plan.Blocked, now: float) -> GatewayError:
    """Nothing can serve the request now: every deployment is cooling down or its circuit is open."""
    wait = max(blocked.until - now, 0.0) if blocked.until else None
    after = f"; retry after {math.ceil(wait)}s" if wait is not None else ""
    if blocked.rate_limited:
        return RateLimitError(
            f"Every deployment of model `{model}` is rate-limited by its provider{after}.", retry_after=wait
        )
    return ServiceUnavailableError(
        f"No deployment of model `{model}` is available (circuits open after failures){after}.", retry_after=wait
    )


def _max_output(chat: ChatCompletionRequest) -> int | None:
    return chat.max_completion_tokens or chat.max_tokens


def _estimate(req: ChatRequest, progress: Progress) -> Usage:
    """Usage when the provider reported none (the stream was cut): the prompt estimated from its text,
    one output token per chunk relayed (what OpenAI-style streams send)."""
    prompt = estimate_prompt_tokens(req.chat) if req.chat is not None else 0
    return Usage(input_tokens=prompt, output_tokens=progress.sent)
