"""Agent runs: requests and tool calls a client tags with one run id (`x-gatehouse-run-id`), limited together
(model calls, tool calls, spend across both, the same tool with the same arguments again and again).

Counters are JetStream counter subjects under `<p>.run.<key>.<run>.…` (shared/counters.py): every ingress
replica counts into the same ones, so a run is limited however its calls are spread. They live in the `<P>_RUNS`
stream, whose max age is `mcp.run_ttl_s`: a run's counters are forgotten that long after its last call. A run id
is scoped to the key that uses it. Tool spend is counted when the call is admitted (its price is fixed); model
spend when the request ends, at the dearest price among the model's deployments (conservative: runaway spend is
what this stops). Counters that cannot be reached let the call through (as quotas do by default), with a warning.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re

import msgspec

from shared.counters import Count, CounterError, Counters, Op
from shared.directory import Entitlement
from shared.governance import RunLimits
from shared.subjects import Subjects

log = logging.getLogger("gatehouse.ingress.runs")

RUN_HEADER = "x-gatehouse-run-id"
RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
MICRO = 1_000_000
_CANONICAL = msgspec.json.Encoder(order="sorted")
_ANY = msgspec.json.Decoder()


class RunLimitError(Exception):
    """The run reached one of its limits; the message says which, for the client."""


class BadRunId(ValueError):
    pass


def run_id_of(value: str | None) -> str:
    """The run id of a request's header ('' when none); BadRunId when it is not a usable id."""
    if not value:
        return ""
    if not RUN_ID.fullmatch(value):
        raise BadRunId(
            f"The {RUN_HEADER} header must be 1-64 letters, digits, '-' or '_', starting with a letter or digit."
        )
    return value


def call_digest(tool: str, arguments: bytes) -> str:
    """Same tool, same arguments (whatever their key order or spacing) → same digest."""
    try:
        canonical = _CANONICAL.encode(_ANY.decode(arguments)) if arguments else b"{}"
    except msgspec.DecodeError:
        canonical = arguments
    return hashlib.sha256(tool.encode() + b"\0" + canonical).hexdigest()[:32]


class Runs:
    def __init__(self, counters: Counters, subjects: Subjects, defaults: RunLimits) -> None:
        self._counters = counters
        self._subjects = subjects
        self.defaults = defaults

    def _subject(self, ent: Entitlement, run_id: str, kind: str) -> str:
        return self._subjects.run_counter(ent.key.id, run_id, kind)

    async def tool_call(self, ent: Entitlement, run_id: str, tool: str, arguments: bytes, price_usd: float) -> None:
        """Count a tool call of the run; RunLimitError when it is one too many, a loop, or over the spend."""
        limits = ent.run_limits(self.defaults)
        ops: list[Op] = []
        if limits.max_tool_calls is not None:
            ops.append(Op(self._subject(ent, run_id, "tool"), 1))
        if limits.loop_threshold is not None:
            ops.append(Op(self._subject(ent, run_id, f"loop.{call_digest(tool, arguments)}"), 1))
        if limits.max_spend_usd is not None:
            ops.append(Op(self._subject(ent, run_id, "spend"), math.ceil(price_usd * MICRO)))
        results = await self._add(ops)
        i = 0
        if limits.max_tool_calls is not None:
            if _over(results[i], limits.max_tool_calls):
                raise RunLimitError(f"Run '{run_id}' reached its limit of {limits.max_tool_calls} tool calls.")
            i += 1
        if limits.loop_threshold is not None:
            if _value(results[i]) >= limits.loop_threshold:
                raise RunLimitError(
                    f"Run '{run_id}' looks like a loop: {tool} was called with the same arguments "
                    f"{limits.loop_threshold} times."
                )
            i += 1
        if limits.max_spend_usd is not None and _over(results[i], round(limits.max_spend_usd * MICRO)):
            raise RunLimitError(f"Run '{run_id}' reached its spend limit of ${limits.max_spend_usd:g}.")

    async def model_call(self, ent: Entitlement, run_id: str) -> None:
        """Count a model call of the run; RunLimitError when it is one too many or the run's spend is used up."""
        limits = ent.run_limits(self.defaults)
        ops: list[Op] = []
        if limits.max_model_calls is not None:
            ops.append(Op(self._subject(ent, run_id, "model"), 1))
        if limits.max_spend_usd is not None:
            ops.append(Op(self._subject(ent, run_id, "spend"), 0))
        results = await self._add(ops)
        if limits.max_model_calls is not None and _over(results[0], limits.max_model_calls):
            raise RunLimitError(f"Run '{run_id}' reached its limit of {limits.max_model_calls} model calls.")
        if limits.max_spend_usd is not None and _value(results[-1]) >= round(limits.max_spend_usd * MICRO):
            raise RunLimitError(f"Run '{run_id}' reached its spend limit of ${limits.max_spend_usd:g}.")

    async def spent(self, ent: Entitlement, run_id: str, usd: float) -> None:
        """Add a finished model call's cost to the run's spend (when the run's spend is limited)."""
        if usd > 0 and ent.run_limits(self.defaults).max_spend_usd is not None:
            await self._add([Op(self._subject(ent, run_id, "spend"), math.ceil(usd * MICRO))])

    async def _add(self, ops: list[Op]) -> list[Count | CounterError]:
        results = await self._counters.add_many(ops)
        for result in results:
            if isinstance(result, CounterError):
                log.warning("run counters unavailable: %s", result)
        return results


def _value(result: Count | CounterError) -> int:
    return result.value if isinstance(result, Count) else 0


def _over(result: Count | CounterError, limit: int) -> bool:
    return isinstance(result, Count) and result.value > limit
