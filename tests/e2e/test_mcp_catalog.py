"""MCP catalogs larger than one bus message, end to end: a stdio upstream (tests/mcp_servers/paged.py, the
official SDK's low-level server) pages 800 tools of ~2 kB each (1.6 MB) across 14 `tools/list` pages, on a stack
whose nats-server `max_payload` is about 1.1 MB (`server.max_body_bytes: 65536`). The mcp stage reads every page,
and the catalog crosses the bus to ingress in several answers: an SDK client lists all 800 tools and calls the
last one; the admin API counts them. The gateway's own `tools/list` is paged too (100 tools a page by default): the
client follows `nextCursor`, and a raw request shows the pages and the refusal of a cursor it did not give."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import mcp_types as types
import nats
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from gatehouse.launcher import Stack
from gatehouse.natsserver import free_port
from shared.config import hash_key
from shared.subjects import Subjects
from tests.e2e.mcp_support import logs
from tests.mcp_servers.paged import FAT_BYTES

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(240)]

PAGED = Path(__file__).resolve().parents[1] / "mcp_servers" / "paged.py"
KEY = "sk-e2e-mcp-catalog"
TOOLS = 800
PAGE = 100  # mcp.list_page_size's default


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp: Path = tmp_path_factory.mktemp("mcpcat")
    config = tmp / "gatehouse.yaml"
    config.write_text(f"""
server: {{host: 127.0.0.1, port: 0, request_timeout_s: 30, max_body_bytes: 65536}}
keys:
  - {{id: cat, sha256: {hash_key(KEY)}}}
providers:
  mock: {{kind: mock}}
models:
  - name: mock-1
    deployments: [{{provider: mock, model: mock-1}}]
accounting:
  flush_interval_s: 0.2
mcp:
  servers:
    paged:
      transport: stdio
      command: ["{sys.executable}", "{PAGED}", "{TOOLS}", "60", "fat"]
      health_interval_s: 1
      restart_backoff_s: 0.2
""")
    running = Stack(
        config=config,
        data_dir=tmp / "data",
        host="127.0.0.1",
        port=free_port(),
        prefix="e2emcpcat",
        nats_port=free_port(),
    )
    try:
        running.start()
        if not running.wait_ready(90):
            raise AssertionError(f"stack did not become ready:\n{logs(tmp)}")
        yield running
    except BaseException:
        print(logs(tmp))
        raise
    finally:
        running.stop()


async def _max_payload(stack: Stack) -> int:
    assert stack.nats is not None
    subjects = Subjects(stack.prefix)
    nc = await nats.connect(
        stack.nats.url, nkeys_seed=str(stack.admin_seed_file), inbox_prefix=subjects.role_inbox("admin").encode()
    )
    try:
        return nc.max_payload
    finally:
        await nc.close()


async def _every_tool(client: Client) -> tuple[list[types.Tool], int]:
    """Every tool the gateway lists, following `nextCursor` page by page, and how many pages it took."""
    tools: list[types.Tool] = []
    cursor: str | None = None
    for pages in range(1, 100):
        page = await client.list_tools(cursor=cursor)
        assert len(page.tools) <= PAGE, len(page.tools)
        tools.extend(page.tools)
        cursor = page.next_cursor
        if cursor is None:
            return tools, pages
    raise AssertionError("the gateway's tools/list never ended")


async def test_a_catalog_larger_than_the_bus_carries_in_one_message_is_listed_whole(stack: Stack) -> None:
    max_payload = await _max_payload(stack)
    assert TOOLS * FAT_BYTES > max_payload  # the tool list alone does not fit in one bus message
    http = create_mcp_http_client(headers={"authorization": f"Bearer {KEY}"})
    deadline = time.monotonic() + 60
    tools: list[types.Tool] = []
    async with http, Client(streamable_http_client(f"{stack.ingress_url}/mcp", http_client=http)) as client:
        pages = 0
        while len(tools) < TOOLS and time.monotonic() < deadline:
            tools, pages = await _every_tool(client)  # empty until the upstream has connected
            if len(tools) < TOOLS:
                await asyncio.sleep(0.3)
        assert pages == TOOLS // PAGE, pages
        names = [t.name for t in tools]
        assert names == [f"paged__t{i:04d}" for i in range(TOOLS)], (len(names), names[:3], names[-3:])
        assert all(len(t.description or "") == FAT_BYTES for t in tools)
        listed = sum(len(t.model_dump_json(by_alias=True)) for t in tools)
        assert listed > max_payload, (listed, max_payload)
        result = await client.call_tool(f"paged__t{TOOLS - 1:04d}", {})  # a tool of the last page is known
        assert not result.is_error and result.content[0].text == f"called t{TOOLS - 1:04d}"  # type: ignore[union-attr]
    admin_key = stack.admin_key_file.read_text().strip()
    servers = httpx.get(
        f"{stack.ingress_url}/admin/v1/mcp/servers", headers={"authorization": f"Bearer {admin_key}"}, timeout=30
    ).json()["data"]
    assert [(s["name"], s["healthy"], s["tools"], s["prompts"]) for s in servers] == [("paged", True, TOOLS, TOOLS)]


def _rpc(url: str, session: str, id_: int, method: str, params: dict[str, Any]) -> dict[str, Any]:
    headers = {
        "authorization": f"Bearer {KEY}",
        "accept": "application/json, text/event-stream",
        "mcp-protocol-version": "2025-06-18",
    }
    if session:
        headers["mcp-session-id"] = session
    body = {"jsonrpc": "2.0", "id": id_, "method": method, "params": params}
    answer = httpx.post(url, json=body, headers=headers, timeout=30)
    assert answer.status_code == 200, answer.text
    return {**answer.json(), "session": answer.headers.get("mcp-session-id", session)}


async def test_a_raw_tools_list_is_paged_and_a_foreign_cursor_is_invalid_params(stack: Stack) -> None:
    url = f"{stack.ingress_url}/mcp"
    hello = {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}}
    session = str(_rpc(url, "", 1, "initialize", hello)["session"])
    deadline = time.monotonic() + 60
    first: dict[str, Any] = {}
    while time.monotonic() < deadline:
        first = _rpc(url, session, 2, "tools/list", {})["result"]
        if len(first["tools"]) == PAGE:
            break
        await asyncio.sleep(0.3)  # the upstream is still connecting
    names = [t["name"] for t in first["tools"]]
    assert names == [f"paged__t{i:04d}" for i in range(PAGE)]
    cursor = first["nextCursor"]
    assert isinstance(cursor, str) and cursor
    second = _rpc(url, session, 3, "tools/list", {"cursor": cursor})["result"]
    assert [t["name"] for t in second["tools"]] == [f"paged__t{i:04d}" for i in range(PAGE, 2 * PAGE)]
    for bad in ("not-a-cursor", cursor[:-4], 42):
        error = _rpc(url, session, 4, "tools/list", {"cursor": bad})["error"]
        assert error["code"] == -32602, (bad, error)
    error = _rpc(url, session, 5, "prompts/list", {"cursor": cursor})["error"]  # another list's cursor
    assert error["code"] == -32602 and "not given out by this list" in error["message"], error
