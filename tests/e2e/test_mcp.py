"""MCP end to end: the official `mcp` SDK as the client of gatehouse's `/mcp`, gatehouse aggregating two upstream
servers written with the same SDK (`local` over stdio, launched and supervised by the mcp stage; `remote` over
Streamable HTTP): lists, calls, key policy, the guard on results, quotas, records in ClickHouse, list-changed
notifications, a stdio server killed mid-session and restarted, argument rules, approvals and agent runs."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import mcp_types as types
import pytest
from mcp.shared.exceptions import MCPError

from shared import mcp_errors
from tests.e2e.mcp_support import (
    APPROVAL_TIMEOUT_S,
    MAIN_KEY,
    QUOTA_KEY,
    RUN_KEY,
    STRICT_KEY,
    McpStack,
    logs,
    mcp_stack,
)
from tests.mcp_servers.notes import SECRET

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(240)]


@pytest.fixture(scope="module")
def gh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[McpStack]:
    tmp: Path = tmp_path_factory.mktemp("mcp")
    with mcp_stack(tmp, "e2emcp") as stack:
        try:
            yield stack
        except BaseException:
            print(logs(tmp))
            raise


def text_of(result: types.CallToolResult) -> str:
    return "".join(c.text for c in result.content if isinstance(c, types.TextContent))


async def wait_tools(gh: McpStack, want: set[str], key: str = MAIN_KEY, timeout: float = 60.0) -> set[str]:
    """The key's tool names once they include `want` (upstream sessions connect after the stack is ready)."""
    deadline = time.monotonic() + timeout
    names: set[str] = set()
    while time.monotonic() < deadline:
        async with gh.client(key) as client:
            names = {t.name for t in (await client.list_tools()).tools}
        if want <= names:
            return names
        await asyncio.sleep(0.3)
    raise AssertionError(f"tools never included {want - names}; saw {sorted(names)}")


async def rows(gh: McpStack, query: str, count: int, timeout: float = 30.0) -> list[list[Any]]:
    deadline = time.monotonic() + timeout
    while True:
        result = await gh.sql(query)
        assert not result.error, result.error
        if len(result.rows) >= count or time.monotonic() > deadline:
            return result.rows
        await asyncio.sleep(0.3)


async def test_tools_of_both_servers_are_listed_namespaced_and_called(gh: McpStack) -> None:
    names = await wait_tools(gh, {"local__echo", "remote__echo"})
    assert "local__write_file" not in names  # denied to this key: not even listed
    assert {"remote__write_file", "local__pid", "remote__leak"} <= names
    async with gh.client() as client:
        local = await client.call_tool("local__echo", {"text": "hi"})
        remote = await client.call_tool("remote__echo", {"text": "there"})
        assert (text_of(local), text_of(remote)) == ("local: hi", "remote: there")
        assert not local.is_error
        resources = (await client.list_resources()).resources
        assert {str(r.uri) for r in resources} >= {"local__local://readme", "remote__remote://readme"}
        read = await client.read_resource("remote__remote://readme")
        assert read.contents[0].text == "the remote readme"  # type: ignore[union-attr]
        prompts = {p.name for p in (await client.list_prompts()).prompts}
        assert {"local__greet", "remote__greet"} <= prompts
        prompt = await client.get_prompt("local__greet", {"who": "Ada"})
        assert "Ada" in prompt.messages[0].content.text  # type: ignore[union-attr]
