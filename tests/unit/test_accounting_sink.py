"""The sink's pure helpers: query values made msgpack-safe, chDB paths made absolute, passwords kept out of logs."""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal
from pathlib import Path

import msgspec
import pytest

from services.accounting.analytics import plain
from services.accounting.sink import normalise_dsn, redact_dsn


def test_plain_stringifies_what_msgpack_cannot_carry_as_is() -> None:
    u = uuid.UUID(int=1)
    value = {
        "a": [dt.datetime(2025, 1, 2, 3, 4, 5, 6000), dt.date(2025, 1, 2)],
        1: (Decimal("1.50"), u, b"\xffok", 2**70, -(2**70), 2**64 - 1),
        "n": [None, True, 1.5, "s"],
    }
    assert plain(value) == {
        "a": ["2025-01-02T03:04:05.006000", "2025-01-02"],
        "1": ["1.50", str(u), "\ufffdok", str(2**70), str(-(2**70)), 2**64 - 1],
        "n": [None, True, 1.5, "s"],
    }
    msgspec.msgpack.encode(plain(value))  # must not raise


def test_relative_chdb_paths_become_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert normalise_dsn("chdb://.gatehouse/clickhouse") == f"chdb://{tmp_path / '.gatehouse' / 'clickhouse'}"
    assert (tmp_path / ".gatehouse" / "clickhouse").is_dir()
    assert normalise_dsn(f"chdb://{tmp_path / 'abs'}") == f"chdb://{tmp_path / 'abs'}"
    assert normalise_dsn("http://u:p@host:8123/db") == "http://u:p@host:8123/db"


def test_passwords_stay_out_of_logs() -> None:
    assert redact_dsn("http://gatehouse:s3cret@clickhouse:8123/gatehouse") == (
        "http://gatehouse:***@clickhouse:8123/gatehouse"
    )
    assert redact_dsn("chdb:///data/clickhouse") == "chdb:///data/clickhouse"


def _msg(delivered: int, stream_time: float) -> object:
    from nats.aio.msg import Msg

    reply = f"$JS.ACK.S.accounting.{delivered}.5.5.{int(stream_time * 1e9)}.0"
    return Msg(_client=None, subject="gh.events.request", reply=reply, data=b"")  # type: ignore[arg-type]


def test_only_events_that_can_be_stored_already_are_looked_up() -> None:
    from services.accounting.consumer import may_be_stored

    now = 1_780_000_000.0
    assert not may_be_stored(_msg(1, now + 0.2), now, 600)  # first delivery, moments after the event
    assert may_be_stored(_msg(2, now + 0.2), now, 600)  # redelivered: a process may have stored it and died
    assert may_be_stored(_msg(1, now + 700), now, 600)  # past the duplicate window: an earlier copy may exist
    assert may_be_stored(_msg(1, now + 130), now, 600)  # old enough to be unsure
    assert may_be_stored(_msg(1, now - 300), now, 600)  # clocks apart: unsure
    assert may_be_stored(_msg(1, now + 1), now, 0)  # a stream without a window: always
    assert may_be_stored(object(), now, 600)  # not a JetStream message  # type: ignore[arg-type]
