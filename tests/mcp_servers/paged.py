"""An upstream MCP server for the tests that pages its lists, written with the official `mcp` SDK's low-level
server over stdio: `paged.py TOOLS PAGE_SIZE [MODE]` offers TOOLS tools (`t0000`, `t0001`, …) and as many prompts,
PAGE_SIZE per page of `tools/list` and `prompts/list`, the cursor naming the next offset. MODE `loop` answers every
page with the same cursor (a server whose paging never ends); MODE `fat` gives every tool a description of
`FAT_BYTES` characters (a catalog larger than the bus carries in one message). The tool `resize` (arguments
`{"count": N}`) makes the lists N long and sends `notifications/tools/list_changed`, whether N changed them or not."""

from __future__ import annotations

import sys
from typing import Any

import anyio
import mcp_types as types
from mcp.server.lowlevel import Server
from mcp.server.stdio import stdio_server

FAT_BYTES = 2000


def build(count: int, page_size: int, mode: str) -> Server[Any]:
    size = [count]  # `resize` changes it

    def window(params: types.PaginatedRequestParams | None) -> tuple[range, str | None]:
        count = size[0]
        cursor = params.cursor if params is not None else None
        start = int(cursor) if cursor and cursor.isdigit() else 0
        end = min(start + page_size, count)
        if mode == "loop":
            return range(start, end), "again"
        return range(start, end), (str(end) if end < count else None)

    async def list_tools(ctx: Any, params: types.PaginatedRequestParams | None) -> types.ListToolsResult:
        page, cursor = window(params)
        description = "x" * FAT_BYTES if mode == "fat" else "A paged tool."
        tools = [types.Tool(name=f"t{i:04d}", description=description, input_schema={"type": "object"}) for i in page]
        return types.ListToolsResult(tools=tools, next_cursor=cursor)

    async def list_prompts(ctx: Any, params: types.PaginatedRequestParams | None) -> types.ListPromptsResult:
        page, cursor = window(params)
        return types.ListPromptsResult(prompts=[types.Prompt(name=f"p{i:04d}") for i in page], next_cursor=cursor)

    async def call_tool(ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
        if params.name == "resize":
            size[0] = int((params.arguments or {})["count"])
            await ctx.session.send_tool_list_changed()
        return types.CallToolResult(content=[types.TextContent(type="text", text=f"called {params.name}")])

    return Server("paged", on_list_tools=list_tools, on_list_prompts=list_prompts, on_call_tool=call_tool)


async def main(server: Server[Any]) -> None:
    async with stdio_server() as (read, write):
        await server.run(read, write, server.create_initialization_options())


if __name__ == "__main__":
    anyio.run(main, build(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else ""))
