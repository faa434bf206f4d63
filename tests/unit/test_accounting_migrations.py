"""Schema migrations: found in version order, split into statements, each safe to run twice."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.accounting import migrations


def test_shipped_migrations_are_ordered_contiguous_and_split() -> None:
    found = migrations.load()
    assert [m.version for m in found] == list(range(1, len(found) + 1))
    assert [m.label for m in found[:2]] == ["0001_requests", "0002_guard_verdicts"]
    rollup = next(m for m in found if m.name == "rollup_minute")
    assert len(rollup.statements) == 2  # the target table and its materialized view
    assert any("MATERIALIZED VIEW" in s for m in found for s in m.statements)


def test_every_shipped_statement_can_run_twice() -> None:
    # a crash between a migration and its ledger row, or two replicas starting together, re-runs it
    for m in migrations.load():
        for statement in m.statements:
            assert "IF NOT EXISTS" in statement or "IF EXISTS" in statement, (m.label, statement[:60])


def test_pending_keeps_version_order(tmp_path: Path) -> None:
    (tmp_path / "0010_later.sql").write_text("CREATE TABLE IF NOT EXISTS b (x UInt8) ENGINE = Memory;\n")
    (tmp_path / "0002_first.sql").write_text("-- comment; not a statement\nCREATE TABLE IF NOT EXISTS a\n(x UInt8)\n"
                                             "ENGINE = Memory;\nCREATE VIEW IF NOT EXISTS v AS SELECT 1\n")  # fmt: skip
    found = migrations.load(tmp_path)
    assert [m.version for m in found] == [2, 10]
    assert found[0].statements == (
        "CREATE TABLE IF NOT EXISTS a\n(x UInt8)\nENGINE = Memory",
        "CREATE VIEW IF NOT EXISTS v AS SELECT 1",
    )
    assert migrations.pending(found, {2}) == found[1:]
    assert migrations.pending(found, {2, 10}) == []
    assert migrations.pending(found, set()) == found


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"1_b.sql": "SELECT 1"}, "NNNN_name"),
        ({"0001_A.sql": "SELECT 1"}, "NNNN_name"),
        ({"0001_a.sql": "SELECT 1", "0001_b.sql": "SELECT 2"}, "appears twice"),
        ({"0001_a.sql": "-- only a comment\n"}, "no statements"),
        ({}, "no migrations"),
    ],
)
def test_malformed_migration_folders_fail_at_startup(tmp_path: Path, files: dict[str, str], message: str) -> None:
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(ValueError, match=message):
        migrations.load(tmp_path)
