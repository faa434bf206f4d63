"""JSON log lines carry the request id and trace id of the request whose work they describe, and only that."""

from __future__ import annotations

import asyncio
import json
import logging

from shared.logs import JsonFormatter, bind_request


def _line(name: str = "gatehouse.test", msg: str = "attempt on %s failed") -> dict[str, object]:
    record = logging.LogRecord(name, logging.INFO, __file__, 1, msg, ("dep-1",), None)
    parsed = json.loads(JsonFormatter("router").format(record))
    assert isinstance(parsed, dict)
    return parsed


async def test_a_request_task_tags_its_lines_and_no_other() -> None:
    lines: dict[str, dict[str, object]] = {}

    async def serve(request_id: str, trace_id: str) -> None:
        bind_request(request_id, trace_id)
        await asyncio.sleep(0)
        lines[request_id] = _line()

    await asyncio.gather(serve("r1", "t" * 32), serve("r2", "u" * 32))
    assert lines["r1"]["request_id"] == "r1" and lines["r1"]["trace_id"] == "t" * 32
    assert lines["r2"]["request_id"] == "r2" and lines["r2"]["trace_id"] == "u" * 32
    outside = _line()
    assert "request_id" not in outside and "trace_id" not in outside
    assert outside["msg"] == "attempt on dep-1 failed" and outside["service"] == "router"
    assert outside["level"] == "info"


async def test_tasks_started_by_the_request_inherit_its_ids() -> None:
    async def serve() -> dict[str, object]:
        bind_request("r3", "a" * 32)
        return await asyncio.create_task(asyncio.to_thread(_line))

    line = await asyncio.create_task(serve())
    assert (line["request_id"], line["trace_id"]) == ("r3", "a" * 32)
