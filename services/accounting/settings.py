"""Accounting settings: the common GATEHOUSE_* ones plus GATEHOUSE_ACCOUNTING_*."""

from __future__ import annotations

from shared.settings import ServiceSettings


class AccountingSettings(ServiceSettings):
    # overrides the config file's accounting.clickhouse_dsn when set
    accounting_clickhouse_dsn: str | None = None
    accounting_durable: str = "accounting"
    # an event not acked this long after delivery (e.g. accounting died mid-batch) is delivered again
    accounting_ack_wait_s: float = 30.0
    # pause before retrying a batch whose insert failed (ClickHouse down); doubles up to the max
    accounting_retry_s: float = 0.5
    accounting_retry_max_s: float = 15.0
