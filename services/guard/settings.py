"""Guard settings: the common GATEHOUSE_* ones plus GATEHOUSE_GUARD_*."""

from __future__ import annotations

from shared.settings import ServiceSettings


class GuardSettings(ServiceSettings):
    guard_max_concurrency: int = 256
