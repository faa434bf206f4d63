"""Guard settings: the common GATEHOUSE_* ones plus GATEHOUSE_GUARD_*."""

from __future__ import annotations

from shared.settings import ServiceSettings


class GuardSettings(ServiceSettings):
    guard_max_concurrency: int = 256
    # MCP tool calls in flight at once (each waits for its upstream tool, with its own timeout)
    guard_mcp_max_concurrency: int = 1024
