"""What every scanner returns and how it is called; scanners are pure and never see the clock or env."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

Severity = Literal["low", "medium", "high", "critical"]
SEVERITY_RANK: dict[str, int] = {"low": 0, "medium": 1, "high": 2, "critical": 3}


@dataclass(frozen=True, slots=True)
class Finding:
    """One hit: which scanner and rule, how bad, and where in the scanned text (character offsets)."""

    scanner: str
    rule: str
    severity: Severity
    start: int
    end: int
    score: float = 1.0


class Scanner(Protocol):
    name: str

    def scan(self, text: str) -> list[Finding]: ...
