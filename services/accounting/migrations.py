"""Versioned ClickHouse schema migrations (deploy/clickhouse/migrations/NNNN_name.sql), each applied once."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "deploy" / "clickhouse" / "migrations"
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")

LEDGER_DDL = (
    "CREATE TABLE IF NOT EXISTS schema_migrations "
    "(version UInt32, name String, applied_at DateTime64(3, 'UTC') DEFAULT now64(3)) "
    "ENGINE = MergeTree ORDER BY version"
)


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    statements: tuple[str, ...]


def split_statements(sql: str) -> tuple[str, ...]:
    """Statements of a migration file: `;` at the end of a line ends one; `--` comment lines are dropped."""
    lines = [line for line in sql.splitlines() if not line.lstrip().startswith("--")]
    statements, current = [], []
    for line in lines:
        current.append(line)
        if line.rstrip().endswith(";"):
            statements.append("\n".join(current).strip().rstrip(";").strip())
            current = []
    tail = "\n".join(current).strip()
    if tail:
        statements.append(tail)
    return tuple(s for s in statements if s)


def load(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """All migrations in version order; a malformed name or a repeated version is an error."""
    found: dict[int, Migration] = {}
    for path in sorted(directory.glob("*.sql")):
        match = _NAME.match(path.name)
        if not match:
            raise ValueError(f"migration file {path.name} does not match NNNN_name.sql")
        version = int(match.group(1))
        if version in found:
            raise ValueError(f"migration version {version} appears twice")
        found[version] = Migration(version, match.group(2), split_statements(path.read_text()))
    return [found[v] for v in sorted(found)]


def pending(all_migrations: list[Migration], applied: set[int]) -> list[Migration]:
    return [m for m in all_migrations if m.version not in applied]
