"""`gatehouse sql` against the running stack: analysts get answers; the reproduced holes stay closed at the
command an operator actually types (reading the accounting process's environment with file(), writing a
file with INTO OUTFILE hidden behind a `//` comment trick)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from gatehouse.cli import app
from tests.e2e.conftest import RunningStack

pytestmark = pytest.mark.e2e


def gatehouse_sql(stack: RunningStack, query: str) -> tuple[int, str]:
    """Exit code and everything `gatehouse sql --format tsv` printed (stdout and stderr)."""
    args = ["sql", "--data-dir", str(stack.stack.data_dir), "--format", "tsv", query]
    result = CliRunner().invoke(app, args, catch_exceptions=False)
    return result.exit_code, result.output + result.stderr


def test_gatehouse_sql_answers_an_analyst(running_stack: RunningStack) -> None:
    code, out = gatehouse_sql(running_stack, "SELECT 40 + 2 AS answer")
    assert (code, out) == (0, "answer\n42\n")


def test_gatehouse_sql_cannot_read_the_accounting_environment(running_stack: RunningStack) -> None:
    code, out = gatehouse_sql(running_stack, "SELECT file('/proc/self/environ')")
    assert code == 1 and "query refused: function file() is not allowed" in out, out
    # the accounting process's environment names its own credential: none of it may come back
    assert "GATEHOUSE_" not in out and "NKEY" not in out


def test_gatehouse_sql_cannot_write_a_file(running_stack: RunningStack, tmp_path: Path) -> None:
    target = tmp_path / "written.txt"
    code, out = gatehouse_sql(running_stack, f"SELECT 1 // '\nINTO OUTFILE '{target}' -- '")
    assert code == 1 and "query refused: INTO OUTFILE is not allowed" in out, out
    assert not target.exists()
