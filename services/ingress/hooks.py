"""The plugin hooks that run in ingress: before_guard (tags, request headers, block) and after_response
(tags, response headers), each given a RequestView of the request (shared/plugins.py)."""

from __future__ import annotations

import time
from collections.abc import Mapping

from starlette.datastructures import MutableHeaders

from shared.plugins import HookRunner, RequestView, caller_fields
from shared.records import RequestRecord


def view(runner: HookRunner, point: str, record: RequestRecord, headers: Mapping[str, str]) -> RequestView:
    outcome = record.outcome
    usage = outcome.usage if outcome is not None else None
    error = record.error
    return RequestView(
        point=point,
        request_id=record.request_id,
        api=record.api,
        model=record.model,
        stream=record.stream,
        headers=runner.header_view(headers),
        tags=dict(record.tags),
        guard_action=record.guard.action if record.guard is not None else "",
        status=record.status if point == "after_response" else 0,
        error_type=error.type if error is not None else "",
        error_code=error.code if error is not None else "",
        provider=outcome.provider if outcome is not None else "",
        deployment=outcome.deployment if outcome is not None else "",
        input_tokens=usage.input_tokens if usage is not None else 0,
        output_tokens=usage.output_tokens if usage is not None else 0,
        latency_ms=(time.monotonic() - record.started) * 1000 if point == "after_response" else 0.0,
        **caller_fields(record.caller),
    )


async def before_guard(
    runner: HookRunner, record: RequestRecord, headers: Mapping[str, str]
) -> tuple[Mapping[str, str], dict[str, str]]:
    """Run the before_guard hooks: the request headers as they rewrote them, and the tags they add (the
    caller puts them over the header-derived ones). Raises PluginBlocked or PluginError."""
    applied = await runner.run("before_guard", view(runner, "before_guard", record, headers))
    if not applied.headers:
        return headers, applied.tags
    rewritten = MutableHeaders(headers=dict(headers))
    for name, value in applied.headers.items():
        if value:
            rewritten[name.lower()] = value
        elif name.lower() in rewritten:
            del rewritten[name.lower()]  # an empty value removes the header
    return rewritten, applied.tags


async def after_response(runner: HookRunner, record: RequestRecord, headers: Mapping[str, str]) -> dict[str, str]:
    """Run the after_response hooks; the headers they add to the answer (their tags go on the record)."""
    applied = await runner.run("after_response", view(runner, "after_response", record, headers))
    if applied.tags:
        record.tags = {**record.tags, **applied.tags}
    return {name.lower(): value for name, value in applied.headers.items() if value}
