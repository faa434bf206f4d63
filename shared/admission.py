"""Quotas and budgets before dispatch: count the request against every level's limits, atomically across
ingress replicas, and reserve its worst-case cost; after it, give back what it held.

Counters are JetStream counter subjects (shared/counters.py), so the same key counted by two replicas
is one count. Per request, every increment goes out at once (one round trip in all):
- requests per minute: +1 on the scope's window counter; the request passes while the total ≤ rpm
  (so of a burst, exactly `rpm` pass in a window);
- tokens per minute: the window's total (tokens are added from real usage after each response; a
  total this replica learnt in the last 250 ms is used without a read);
- concurrency: +1, given back when the request ends (or when its reservation expires, if the replica died);
- hard budgets: + the worst-case cost in micro-USD; a total over the amount is given back and refused
  (or, where the budget says `clamp`, max_tokens is lowered to what the remainder covers).
Concurrent requests therefore cannot overspend a budget: each sees the others' reservations.

With leases (`governance.leases`, the default; shared/leases.py), requests per minute and hard budgets are
counted in blocks: the replica takes many requests' worth in one increment ahead of time and draws each
request from it locally, so a request that needs no other counter makes no round trip at all. Near a limit
(a block would be under MIN_BLOCK units) every request is counted exactly again, as above. Tokens per minute
use the cached total; concurrency is always counted per request.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass, field

from shared.counters import Count, CounterError, Counters, Op
from shared.directory import Entitlement, Scope
from shared.errors import BudgetExceededError, RateLimitError, ServiceUnavailableError
from shared.governance import Budget
from shared.leases import Leases, Note
from shared.periods import period_end, period_key, window, window_reset
from shared.route_pricing import RoutePricing
from shared.schemas.chat import Hold, Reservation
from shared.subjects import Subjects

log = logging.getLogger("gatehouse.ingress.admission")

MICRO = 1_000_000
# a clamped answer shorter than this is not worth sending: refuse instead
MIN_CLAMPED_TOKENS = 16
# how long a tokens-per-minute total this replica learnt stays good enough to check against
TPM_FRESH_S = 0.25
TPM_CACHE_SIZE = 10_000
_READ = CounterError("not read yet")  # marks a tokens window that needs a read in the batch


@dataclass
class Admitted:
    """What one admitted request holds, and the rate-limit headers it answers with."""

    headers: dict[str, str] = field(default_factory=dict)
    reservation: Reservation | None = None
    concurrency: list[str] = field(default_factory=list)
    tpm: list[str] = field(default_factory=list)
    max_tokens: int | None = None  # lowered by a clamping budget
    covered_output: int | None = None  # the output tokens the hard budgets' reservation covers


@dataclass(frozen=True, slots=True)
class Estimate:
    """The request's size before it runs: prompt tokens (estimated) and the most output it can have."""

    input_tokens: int
    output_tokens: int  # per choice
    pricing: RoutePricing
    choices: int = 1  # `n`: every choice may write `output_tokens`

    def cost(self, output_tokens: int | None = None) -> float:
        """The worst case with `output_tokens` per choice (default: the most the request may write)."""
        per_choice = self.output_tokens if output_tokens is None else output_tokens
        return self.pricing.worst_case(self.input_tokens, per_choice * self.choices)


def _reset(seconds: float) -> str:
    """OpenAI's reset format: `1s`, `6m0s`, `20ms`."""
    if seconds < 1:
        return f"{max(int(seconds * 1000), 1)}ms"
    whole = math.ceil(seconds)
    minutes, secs = divmod(whole, 60)
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"


def budget_hold(scope: Scope, budget: Budget, subject: str, micro: int, now: float, ent: Entitlement) -> Hold:
    """What a reservation holds on one budget: `micro` micro-USD on its spend counter (0 for a soft budget)."""
    return Hold(
        subject=subject,
        micro_usd=micro,
        scope=scope.name,
        period=budget.period,
        period_key=period_key(budget.period, now, ent.timezone),
        amount_micro=round(budget.amount_usd * MICRO),
        alerts=list(budget.alerts),
        hard=budget.hard,
    )


def exceeded(
    scope: Scope, budget: Budget, now: float, ent: Entitlement, what: str = "this request"
) -> BudgetExceededError:
    """The 429 of a budget that cannot cover `what`, with Retry-After to the end of its period."""
    end = period_end(budget.period, now, ent.timezone)
    when = f"; it resets with the {budget.period} period" if end else ""
    return BudgetExceededError(
        f"The {budget.period} budget of {scope.level} '{scope.id}' (${budget.amount_usd:g}) cannot cover {what}{when}.",
        retry_after=(end - now) if end else None,
    )


async def reserve_price(
    counters: Counters,
    subjects: Subjects,
    ent: Entitlement,
    request_id: str,
    price_usd: float,
    expires_at: float,
    what: str,
) -> Reservation | None:
    """Reserve a fixed price (a priced tool call) on the key's budgets as `Governor.admit` reserves a request's
    worst case: every hard budget holds it on its spend counter (one it would cross refuses `what`, everything
    given back first), soft budgets hold nothing. Accounting settles the reservation from the call's record to
    what it actually cost (0 for a call that failed), so the spend reaches the settled counters, the alerts and
    the ledger as model spend does; None when there is nothing to reserve."""
    if price_usd <= 0:
        return None
    now = time.time()
    budgets = [(s, b) for s in ent.scopes for b in s.limits.budgets]
    if not budgets:
        return None
    micro = math.ceil(price_usd * MICRO)
    hard = [(s, b) for s, b in budgets if b.hard]
    spend = [subjects.spend_counter(s.name, period_key(b.period, now, ent.timezone)) for s, b in hard]
    results = await counters.add_many([Op(subject, micro) for subject in spend])
    held = [subject for subject, r in zip(spend, results, strict=True) if isinstance(r, Count)]
    refusal: Exception | None = None
    if len(held) < len(spend):
        # budgets fail closed: without the counter nothing proves the spend is covered
        refusal = ServiceUnavailableError("Budget counters are unavailable; try again shortly.", retry_after=1.0)
    else:
        for (scope, budget), result in zip(hard, results, strict=True):
            if isinstance(result, Count) and result.value > round(budget.amount_usd * MICRO):
                refusal = exceeded(scope, budget, now, ent, what)
                break
    if refusal is not None:
        if held:
            for result in await counters.add_many([Op(subject, -micro) for subject in held]):
                if isinstance(result, CounterError):
                    log.warning("counter update lost: %s", result)
        raise refusal
    holds = [
        budget_hold(scope, budget, subject, micro, now, ent)
        for (scope, budget), subject in zip(hard, spend, strict=True)
    ]
    holds += [
        budget_hold(s, b, subjects.spend_counter(s.name, period_key(b.period, now, ent.timezone)), 0, now, ent)
        for s, b in budgets
        if not b.hard
    ]
    return Reservation(
        request_id=request_id, amount_usd=micro / MICRO if hard else 0.0, holds=holds, expires_at=expires_at
    )


class Governor:
    def __init__(
        self,
        counters: Counters,
        subjects: Subjects,
        *,
        quotas_fail_open: bool,
        reservation_grace_s: float,
        leases: bool = True,
        note: Note | None = None,
    ) -> None:
        """`leases`: admit requests per minute and hard budgets from blocks this replica leases (shared/leases.py;
        `note` publishes a budget lease's state); False: every request is counted exactly, one round trip each."""
        self._counters = counters
        self._subjects = subjects
        self._fail_open = quotas_fail_open
        self._grace = reservation_grace_s
        self._pending: set[asyncio.Future[None]] = set()
        self._tpm_seen: dict[str, tuple[int, float]] = {}  # tokens window → (total, when learnt)
        self.leases = Leases(counters, reservation_grace_s=reservation_grace_s, note=note) if leases else None

    async def admit(
        self, ent: Entitlement, request_id: str, estimate: Estimate, deadline: float, *, budgets: bool = True
    ) -> Admitted:
        """Count the request and reserve its worst case. `budgets=False`: quotas only (a batch item, whose
        cost is covered by its job's reservation, services/batch)."""
        now = time.time()
        admitted = Admitted()
        if not ent.governed:
            return admitted
        minute = window(now)
        rpm = [(s, q) for s in ent.scopes if (q := s.limits.quotas.rpm) is not None]
        tpm = [(s, q) for s in ent.scopes if (q := s.limits.quotas.tpm) is not None]
        conc = [(s, q) for s in ent.scopes if (q := s.limits.quotas.max_concurrency) is not None]
        hard = [(s, b) for s in ent.scopes for b in s.limits.budgets if b.hard] if budgets else []
        worst_micro = math.ceil(estimate.cost() * MICRO) if hard else 0
        rpm_subjects = [self._subjects.quota_counter("rpm", s.name, minute) for s, _ in rpm]
        tpm_subjects = [self._subjects.quota_counter("tpm", s.name, minute) for s, _ in tpm]
        r_tpm: list[Count | CounterError] = [self._tpm_cached(subject) or _READ for subject in tpm_subjects]
        spend = [self._subjects.spend_counter(s.name, period_key(b.period, now, ent.timezone)) for s, b in hard]
        # drawn from this replica's leases, without a round trip (None: counted exactly below)
        leased, drawn = await self._from_leases(ent, rpm, rpm_subjects, hard, spend, worst_micro, now, deadline)
        # every other counter of the request in one go: one round trip whatever the number of levels
        ops = [Op(subject, 1) for subject, r in zip(rpm_subjects, leased, strict=True) if r is None]
        ops += [Op(subject, 0) for subject, r in zip(tpm_subjects, r_tpm, strict=True) if r is _READ]
        ops += [Op(self._subjects.concurrency_counter(s.name), 1) for s, _ in conc]
        if drawn is None:
            ops += [Op(subject, worst_micro) for subject in spend]
        answers = iter(await self._counters.add_many(ops) if ops else [])
        exact = [r is None for r in leased]
        r_rpm: list[Count | CounterError] = [r if r is not None else next(answers) for r in leased]
        for i, subject in enumerate(tpm_subjects):
            if r_tpm[i] is _READ:
                r_tpm[i] = next(answers)
                if isinstance(r_tpm[i], Count):
                    self._tpm_seen[subject] = (r_tpm[i].value, time.monotonic())  # type: ignore[union-attr]
        r_conc = [next(answers) for _ in conc]
        r_spend: list[Count | CounterError] = list(drawn[1]) if drawn is not None else [next(answers) for _ in spend]
        self._learn(rpm_subjects, r_rpm, exact, spend if drawn is None else [], r_spend)
        held_conc = [
            self._subjects.concurrency_counter(s.name)
            for (s, _), r in zip(conc, r_conc, strict=True)
            if isinstance(r, Count)
        ]
        # what this request added to the spend counters itself (given back if it is refused)
        held_spend = (
            [(subj, worst_micro) for subj, r in zip(spend, r_spend, strict=True) if isinstance(r, Count)]
            if drawn is None
            else []
        )
        try:
            self._check_quotas(rpm, r_rpm, tpm, r_tpm, conc, r_conc, now, admitted)
            max_tokens = await self._check_budgets(hard, r_spend, held_spend, estimate, now, ent)
        except BaseException:
            self._give_back(held_conc, held_spend)
            if drawn is not None and self.leases is not None:
                self.leases.undraw(drawn[0], spend, worst_micro)
            raise
        admitted.concurrency = held_conc
        admitted.tpm = tpm_subjects
        admitted.max_tokens = max_tokens
        reserved = held_spend if drawn is None else [(subj, worst_micro) for subj in spend]
        if reserved:
            # the output of every choice together, as a stream counts it
            per_choice = max_tokens if max_tokens is not None else estimate.output_tokens
            admitted.covered_output = per_choice * estimate.choices
        holds = self._holds(ent, hard, spend, reserved, now, budgets)
        if holds or held_conc:
            admitted.reservation = Reservation(
                request_id=request_id,
                amount_usd=reserved[0][1] / MICRO if reserved else 0.0,
                holds=holds,
                concurrency=held_conc,
                expires_at=deadline + self._grace,
                lease_id=drawn[0] if drawn is not None else "",
            )
        return admitted

    def _learn(
        self,
        rpm_subjects: list[str],
        r_rpm: list[Count | CounterError],
        exact: list[bool],
        spend: list[str],
        r_spend: list[Count | CounterError],
    ) -> None:
        """Tell the leases the totals that this request's exact increments answered (the headroom they size
        blocks by)."""
        if self.leases is None:
            return
        for subject, result, counted in zip(rpm_subjects, r_rpm, exact, strict=True):
            if counted and isinstance(result, Count):
                self.leases.seen(subject, result.value)
        if spend and all(isinstance(r, Count) for r in r_spend):
            self.leases.spend_seen(spend, [r.value for r in r_spend if isinstance(r, Count)])

    def _holds(
        self,
        ent: Entitlement,
        hard: list[tuple[Scope, Budget]],
        spend: list[str],
        reserved: list[tuple[str, int]],
        now: float,
        budgets: bool,
    ) -> list[Hold]:
        """What the request's reservation holds: its worst case on each hard budget, nothing on soft ones."""
        holds = [
            budget_hold(scope, budget, subject, micro, now, ent)
            for (scope, budget), subject, (_, micro) in zip(hard, spend, reserved, strict=True)
        ]
        # soft budgets reserve nothing and refuse nothing: accounting adds the actual cost and alerts
        holds += [
            budget_hold(
                s, b, self._subjects.spend_counter(s.name, period_key(b.period, now, ent.timezone)), 0, now, ent
            )
            for s in ent.scopes
            for b in s.limits.budgets
            if not b.hard and budgets
        ]
        return holds

    async def _from_leases(
        self,
        ent: Entitlement,
        rpm: list[tuple[Scope, int]],
        rpm_subjects: list[str],
        hard: list[tuple[Scope, Budget]],
        spend: list[str],
        worst_micro: int,
        now: float,
        deadline: float,
    ) -> tuple[list[Count | CounterError | None], tuple[str, list[Count]] | None]:
        """The request's requests-per-minute counts and worst case drawn from this replica's leases, where they
        can be (None where the counter must count it exactly)."""
        r_rpm: list[Count | CounterError | None] = [None] * len(rpm)
        if self.leases is None:
            return r_rpm, None
        for i, ((_, limit), subject) in enumerate(zip(rpm, rpm_subjects, strict=True)):
            r_rpm[i] = await self.leases.request(subject, limit)
        if not hard:
            return r_rpm, None

        def describe(micro: int) -> list[Hold]:
            return [
                budget_hold(scope, budget, subject, micro, now, ent)
                for (scope, budget), subject in zip(hard, spend, strict=True)
            ]

        amounts = [round(b.amount_usd * MICRO) for _, b in hard]
        return r_rpm, await self.leases.spend(spend, amounts, worst_micro, deadline, describe)

    def _check_quotas(
        self,
        rpm: list[tuple[Scope, int]],
        r_rpm: list[Count | CounterError],
        tpm: list[tuple[Scope, int]],
        r_tpm: list[Count | CounterError],
        conc: list[tuple[Scope, int]],
        r_conc: list[Count | CounterError],
        now: float,
        admitted: Admitted,
    ) -> None:
        """Set the rate-limit headers (the tightest scope's), then raise for the first limit exceeded;
        the headers travel on the error too, as OpenAI sends them on its 429s."""
        reset = window_reset(now)
        refusal: RateLimitError | None = None
        requests_left: tuple[int, int] | None = None
        tokens_left: tuple[int, int] | None = None
        for (scope, limit), result in zip(rpm, r_rpm, strict=True):
            if not isinstance(result, Count):
                self._unavailable(result)
                continue
            if result.value > limit and refusal is None:
                refusal = RateLimitError(
                    f"Rate limit reached for {scope.level} '{scope.id}': {limit} requests per minute.",
                    retry_after=reset,
                )
            left = (limit - result.value, limit)
            requests_left = left if requests_left is None or left[0] < requests_left[0] else requests_left
        for (scope, limit), result in zip(tpm, r_tpm, strict=True):
            if not isinstance(result, Count):
                self._unavailable(result)
                continue
            if result.value >= limit and refusal is None:
                refusal = RateLimitError(
                    f"Rate limit reached for {scope.level} '{scope.id}': {limit} tokens per minute.", retry_after=reset
                )
            left = (limit - result.value, limit)
            tokens_left = left if tokens_left is None or left[0] < tokens_left[0] else tokens_left
        for (scope, limit), result in zip(conc, r_conc, strict=True):
            if not isinstance(result, Count):
                self._unavailable(result)
                continue
            if result.value > limit and refusal is None:
                refusal = RateLimitError(
                    f"Too many concurrent requests for {scope.level} '{scope.id}' (limit {limit}).", retry_after=1.0
                )
        if requests_left is not None:
            admitted.headers["x-ratelimit-limit-requests"] = str(requests_left[1])
            admitted.headers["x-ratelimit-remaining-requests"] = str(max(requests_left[0], 0))
            admitted.headers["x-ratelimit-reset-requests"] = _reset(reset)
        if tokens_left is not None:
            admitted.headers["x-ratelimit-limit-tokens"] = str(tokens_left[1])
            admitted.headers["x-ratelimit-remaining-tokens"] = str(max(tokens_left[0], 0))
            admitted.headers["x-ratelimit-reset-tokens"] = _reset(reset)
        if refusal is not None:
            refusal.headers = dict(admitted.headers)
            raise refusal

    def _tpm_cached(self, subject: str) -> Count | None:
        """A tokens-per-minute window's total as this replica last learnt it, when that is recent (its
        own additions return the total; other replicas' show up within TPM_FRESH_S); None: read it.
        Tokens are counted after each response anyway, so the check is as exact as usage allows."""
        seen = self._tpm_seen.get(subject)
        if seen is not None and time.monotonic() - seen[1] < TPM_FRESH_S:
            return Count(seen[0])
        return None

    def _unavailable(self, error: BaseException) -> None:
        log.warning("quota counters unavailable: %s", error)
        if not self._fail_open:
            raise ServiceUnavailableError("Quota counters are unavailable; try again shortly.", retry_after=1.0)

    async def _check_budgets(
        self,
        budgets: list[tuple[Scope, Budget]],
        results: list[Count | CounterError],
        held: list[tuple[str, int]],
        estimate: Estimate,
        now: float,
        ent: Entitlement,
    ) -> int | None:
        """Check each hard budget's new total; clamp or refuse when it is over. Returns the lowered
        max_tokens (or None). `held` (subject, micro-USD) is kept current: on an exception the caller
        gives back exactly what it says."""
        if not budgets:
            return None
        if any(not isinstance(r, Count) for r in results):
            # budgets fail closed: without the counter nothing proves the spend is covered
            raise ServiceUnavailableError("Budget counters are unavailable; try again shortly.", retry_after=1.0)
        worst_micro = held[0][1] if held else 0
        totals = [r.value for r in results if isinstance(r, Count)]
        over = [
            (scope, budget, total)
            for (scope, budget), total in zip(budgets, totals, strict=True)
            if total > round(budget.amount_usd * MICRO)
        ]
        if not over:
            return None
        scope, budget, _ = over[0]
        if any(b.on_exceed != "clamp" for _, b, _ in over):
            raise self._exceeded(scope, budget, now, ent)
        # clamp: the output the tightest remainder covers, reserved instead of the worst case
        remainder = min(round(b.amount_usd * MICRO) - (total - worst_micro) for _, b, total in over)
        affordable = estimate.pricing.affordable_output(estimate.input_tokens, remainder / MICRO, estimate.choices)
        tokens = min(affordable, estimate.output_tokens)  # per choice
        if tokens < MIN_CLAMPED_TOKENS:
            raise self._exceeded(scope, budget, now, ent)
        lowered = math.ceil(estimate.cost(tokens) * MICRO)
        adjusted = await self._counters.add_many([Op(subject, lowered - worst_micro) for subject, _ in held])
        for i, result in enumerate(adjusted):
            if isinstance(result, Count):
                held[i] = (held[i][0], lowered)
        for (s, b), result in zip(budgets, adjusted, strict=True):
            if not isinstance(result, Count):
                raise ServiceUnavailableError("Budget counters are unavailable; try again shortly.", retry_after=1.0)
            if result.value > round(b.amount_usd * MICRO):
                raise self._exceeded(s, b, now, ent)
        return tokens

    def _exceeded(self, scope: Scope, budget: Budget, now: float, ent: Entitlement) -> BudgetExceededError:
        return exceeded(scope, budget, now, ent)

    def _give_back(self, concurrency: list[str], holds: list[tuple[str, int]]) -> None:
        ops = [Op(subject, -1) for subject in concurrency] + [Op(subject, -micro) for subject, micro in holds]
        if ops:
            self._spawn(ops)

    async def finish(self, admitted: Admitted, tokens: int) -> None:
        """The request ended: give back its concurrency, count its tokens (its spend is settled by accounting),
        and tell the budget lease it was drawn from (after its record was handed to the publisher)."""
        if self.leases is not None and admitted.reservation is not None and admitted.reservation.lease_id:
            self.leases.ended(admitted.reservation.lease_id)
        ops = [Op(subject, -1) for subject in admitted.concurrency]
        if tokens > 0:
            ops += [Op(subject, tokens) for subject in admitted.tpm]
        if ops:
            self._spawn(ops, frozenset(admitted.tpm))

    def _spawn(self, ops: list[Op], tokens_windows: frozenset[str] = frozenset()) -> None:
        """Send these increments in the background (one batch); note the tokens totals they return."""

        async def run() -> None:
            for op, result in zip(ops, await self._counters.add_many(ops), strict=True):
                if isinstance(result, CounterError):
                    log.warning("counter update lost: %s", result)
                elif op.subject in tokens_windows:
                    if len(self._tpm_seen) > TPM_CACHE_SIZE:
                        self._tpm_seen.clear()
                    self._tpm_seen[op.subject] = (result.value, time.monotonic())

        task = asyncio.ensure_future(run())
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def drain(self, timeout: float = 5.0) -> None:
        """Give back every lease, then wait for the increments in flight."""
        if self.leases is not None:
            await self.leases.drain(timeout)
        if self._pending:
            await asyncio.wait(set(self._pending), timeout=timeout)
