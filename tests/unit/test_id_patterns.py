"""Ids and names are checked whole: a pattern ending in `$` used with `match` also accepts a trailing newline
("ml\\n"), which then reaches a seed file's name, a NATS subject or nats.conf."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from pydantic import ValidationError

from services.accounting.explorer import BadExplorerQuery, checked_id
from services.batch.plan import check_job_id
from services.ingress.mcp.runs import BadRunId, run_id_of
from shared.errors import InvalidRequestError
from shared.governance import valid_id
from shared.mcp_config import McpConfig
from shared.producers import Namespace


def _namespace(text: str) -> object:
    return Namespace.parse(text)


def _mcp_server(name: str) -> object:
    return McpConfig.model_validate({"servers": {name: {"transport": "http", "url": "http://127.0.0.1:1/mcp"}}})


CHECKS: list[tuple[Callable[[str], object], str, type[Exception]]] = [
    (_namespace, "team.ml", ValueError),
    (check_job_id, "nightly-2026", InvalidRequestError),
    (checked_id, "req_1", BadExplorerQuery),
    (run_id_of, "run-1", BadRunId),
    (_mcp_server, "notes", ValidationError),
]


@pytest.mark.parametrize("check,good,refusal", CHECKS)
@pytest.mark.parametrize("tail", ["\n", "\r\n", " ", "\n\n"])
def test_an_id_with_a_trailing_newline_is_refused(
    check: Callable[[str], object], good: str, refusal: type[Exception], tail: str
) -> None:
    check(good)  # the control: the id itself is accepted
    with pytest.raises(refusal):
        check(good + tail)


def test_a_governance_id_is_checked_whole() -> None:
    assert valid_id("ml") and valid_id("k-ml_2")
    assert not valid_id("ml\n") and not valid_id("\nml") and not valid_id("ml.x")
