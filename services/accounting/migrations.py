"""Versioned ClickHouse schema migrations (deploy/clickhouse/migrations/NNNN_name.sql), each applied once.

Applied versions are recorded in `schema_migrations`. Every statement must be idempotent
(`IF NOT EXISTS`): a crash between a migration's statements and its ledger row, or two replicas
starting at once against one ClickHouse server, runs a migration again.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "deploy" / "clickhouse" / "migrations"
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
# what a statement of our own migrations creates (not user input: the files ship with the code)
_CREATES = re.compile(r"^CREATE\s+(?:TABLE|(?:MATERIALIZED\s+)?VIEW)\s+IF\s+NOT\s+EXISTS\s+(\w+)", re.IGNORECASE)
LEDGER = "schema_migrations"

LEDGER_DDL = (
    f"CREATE TABLE IF NOT EXISTS {LEDGER} "
    "(version UInt32, name String, applied_at DateTime64(3, 'UTC') DEFAULT now64(3)) "
    "ENGINE = MergeTree ORDER BY version"
)
APPLIED_SQL = "SELECT DISTINCT version FROM schema_migrations"


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    statements: tuple[str, ...]

    @property
    def label(self) -> str:
        return f"{self.version:04d}_{self.name}"


def split_statements(sql: str) -> tuple[str, ...]:
    """Statements of a migration file: a `;` at the end of a line ends one; `--` comment lines are dropped."""
    statements: list[str] = []
    current: list[str] = []
    for line in sql.splitlines():
        if line.lstrip().startswith("--"):
            continue
        current.append(line)
        if line.rstrip().endswith(";"):
            statements.append("\n".join(current).strip().rstrip(";").strip())
            current = []
    statements.append("\n".join(current).strip())
    return tuple(s for s in statements if s)


def load(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """All migrations in version order; a malformed name, a repeated version or an empty file is an error."""
    found: dict[int, Migration] = {}
    for path in sorted(directory.glob("*.sql")):
        match = _NAME.match(path.name)
        if not match:
            raise ValueError(f"migration file {path.name} does not match NNNN_name.sql")
        version = int(match.group(1))
        if version in found:
            raise ValueError(f"migration version {version} appears twice ({found[version].label}, {path.name})")
        statements = split_statements(path.read_text(encoding="utf-8"))
        if not statements:
            raise ValueError(f"migration file {path.name} has no statements")
        found[version] = Migration(version, match.group(2), statements)
    if not found:
        raise ValueError(f"no migrations found in {directory}")
    return [found[v] for v in sorted(found)]


def pending(all_migrations: list[Migration], applied: set[int]) -> list[Migration]:
    """The migrations still to apply, in version order."""
    return [m for m in all_migrations if m.version not in applied]


def tables(all_migrations: list[Migration]) -> frozenset[str]:
    """The tables and views the migrations create, plus the ledger: what analytics queries may read."""
    names = {m.group(1) for mig in all_migrations for s in mig.statements if (m := _CREATES.match(s))}
    return frozenset({*names, LEDGER})
