"""mcp stage settings: the common GATEHOUSE_* ones plus GATEHOUSE_MCP_*."""

from __future__ import annotations

from pydantic import Field

from shared.settings import ServiceSettings


class McpSettings(ServiceSettings):
    # tool calls in flight at once in this replica, all servers together (each server has its own cap too)
    mcp_max_concurrency: int = Field(default=512, gt=0)
