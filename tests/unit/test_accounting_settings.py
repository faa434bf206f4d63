"""Accounting settings come from GATEHOUSE_ACCOUNTING_*, falling back to the GATEHOUSE_* every service reads."""

from __future__ import annotations

import pytest

from services.accounting.settings import AccountingSettings


def test_own_prefix_wins_and_common_names_are_a_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEHOUSE_NATS_URL", "nats://common:4222")
    monkeypatch.setenv("GATEHOUSE_SUBJECT_PREFIX", "common")
    monkeypatch.setenv("GATEHOUSE_ACCOUNTING_SUBJECT_PREFIX", "own")
    monkeypatch.setenv("GATEHOUSE_ACCOUNTING_CLICKHOUSE_DSN", "http://ch:8123/db")
    monkeypatch.setenv("GATEHOUSE_ACCOUNTING_ACK_WAIT_S", "3")
    settings = AccountingSettings()
    assert settings.nats_url == "nats://common:4222"
    assert settings.subject_prefix == "own"
    assert settings.clickhouse_dsn == "http://ch:8123/db"
    assert settings.ack_wait_s == 3.0
    assert settings.config == "deploy/gatehouse.yaml"


def test_defaults_and_cluster_urls(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("NATS_URL", "SUBJECT_PREFIX", "CONFIG", "CLICKHOUSE_DSN"):
        monkeypatch.delenv(f"GATEHOUSE_{name}", raising=False)
        monkeypatch.delenv(f"GATEHOUSE_ACCOUNTING_{name}", raising=False)
    settings = AccountingSettings(nats_url="nats://a:1, nats://b:2")
    assert settings.nats_servers == ["nats://a:1", "nats://b:2"]
    assert settings.subject_prefix == "gh" and settings.clickhouse_dsn is None
    assert settings.max_deliver >= 2


def test_the_reader_dsn_comes_from_the_environment_and_stays_out_of_reprs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEHOUSE_ACCOUNTING_QUERY_DSN", "http://gatehouse_reader:s3cret@ch:8123/gatehouse")
    settings = AccountingSettings()
    assert settings.query_dsn is not None
    assert settings.query_dsn.get_secret_value() == "http://gatehouse_reader:s3cret@ch:8123/gatehouse"
    assert "s3cret" not in repr(settings)


def test_the_result_byte_backstop_stays_far_above_the_reply_size() -> None:
    with pytest.raises(ValueError, match="query_max_result_bytes"):
        AccountingSettings(query_max_result_bytes=2_000_000, query_max_reply_bytes=1_000_000)
