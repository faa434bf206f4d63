"""Accounting settings: GATEHOUSE_ACCOUNTING_* (the common GATEHOUSE_* names are accepted as a fallback)."""

from __future__ import annotations

from pydantic import AliasChoices, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.natsconn import NatsLink

_P = "GATEHOUSE_ACCOUNTING_"


def _env(name: str) -> AliasChoices:
    """The service's own variable first, then the one every service reads (the launcher sets both)."""
    return AliasChoices(f"{_P}{name}", f"GATEHOUSE_{name}")


class AccountingSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=_P, extra="ignore", frozen=True, populate_by_name=True)

    nats_url: str = Field(default="nats://127.0.0.1:4222", validation_alias=_env("NATS_URL"))
    # the file holding the accounting role's NATS NKey seed; empty: connect unauthenticated (a dev server)
    nats_nkey_seed_file: str = Field(default="", validation_alias=_env("NATS_NKEY_SEED_FILE"))
    config: str = Field(default="deploy/gatehouse.yaml", validation_alias=_env("CONFIG"))
    subject_prefix: str = Field(default="gh", validation_alias=_env("SUBJECT_PREFIX"))
    log_level: str = Field(default="INFO", validation_alias=_env("LOG_LEVEL"))
    # fault injection for tests (a failpoint): when set and the file does not exist yet, the process creates it
    # and exits right after settling a batch's reservations, before storing and acking it — the moment
    # a crash would settle twice if settlement were not idempotent
    crash_after_settle_file: str = ""
    # NATS request and JetStream publish timeouts (counters, reservation states, alerts)
    nats_timeout_s: float = Field(default=5.0, gt=0, validation_alias=_env("NATS_TIMEOUT_S"))
    # overrides the config file's accounting.clickhouse_dsn when set
    clickhouse_dsn: str | None = None
    # where the NNNN_name.sql migrations live; empty means deploy/clickhouse/migrations of this checkout
    migrations_dir: str = ""
    durable: str = "accounting"
    # an event not acked this long after delivery (accounting died mid-batch) goes to another replica;
    # a live replica holding a batch (waiting for ClickHouse) keeps extending it, so this only bounds crashes
    ack_wait_s: float = Field(default=15.0, gt=1)
    # deliveries of one event before JetStream parks it (it stays in the stream and an advisory is logged);
    # only crashes and shutdowns with ClickHouse down count: a live replica retries without redelivery
    max_deliver: int = Field(default=50, ge=2)
    # pause before retrying a batch whose insert failed (ClickHouse down); doubles up to the max
    retry_s: float = Field(default=0.5, gt=0)
    retry_max_s: float = Field(default=15.0, gt=0)
    # analytics queries on a ClickHouse server run as this read-only identity (`gatehouse_reader`, see
    # deploy/clickhouse/users.d); unset, they run as the write identity with readonly=2 per query.
    # From the environment only: it carries a password. Embedded chDB needs none (its reader is built in)
    query_dsn: SecretStr | None = None
    # analytics queries: wall-clock limit, the most rows a reply carries, memory in ClickHouse
    query_timeout_s: float = Field(default=20.0, gt=0)
    query_max_rows: int = Field(default=100_000, gt=0)
    query_max_memory_bytes: int = Field(default=2**30, gt=0)
    # the largest reply on the bus, below NATS max_payload (1 MiB by default): longer results are cut, and say so
    query_max_reply_bytes: int = Field(default=1_000_000, ge=4096)
    # ClickHouse stops a result past this many bytes (block by block): a memory backstop. It must be far above
    # the reply size, so that any result it cuts is also cut, and flagged, by query_max_reply_bytes
    query_max_result_bytes: int = Field(default=128 * 2**20, gt=0)
    # how long a graceful stop waits for the in-flight batch to be stored
    shutdown_timeout_s: float = Field(default=20.0, gt=0)
    # local state: the spool of this process's spans waiting for JetStream (<data_dir>/spool/accounting-spans/)
    data_dir: str = Field(default=".gatehouse", validation_alias=_env("DATA_DIR"))
    # telemetry, as for every service (shared/settings.py; shared/telemetry.py)
    metrics_enabled: bool = Field(default=True, validation_alias=_env("METRICS_ENABLED"))
    metrics_host: str = Field(default="127.0.0.1", validation_alias=_env("METRICS_HOST"))
    metrics_port: int = Field(default=0, ge=0, le=65535, validation_alias=_env("METRICS_PORT"))
    # spans are stored this often (one insert each time: services/accounting/spans.py)
    spans_flush_s: float = Field(default=5.0, gt=0)
    # how often the backlog of the event stream (gatehouse_accounting_pending_events) is read
    metrics_poll_s: float = Field(default=5.0, gt=0)
    tracing_enabled: bool = Field(default=True, validation_alias=_env("TRACING_ENABLED"))
    trace_sample_ratio: float = Field(default=1.0, ge=0, le=1, validation_alias=_env("TRACE_SAMPLE_RATIO"))
    trace_store: bool = Field(default=True, validation_alias=_env("TRACE_STORE"))
    otlp_endpoint: str = Field(default="", validation_alias=_env("OTLP_ENDPOINT"))
    otlp_headers: SecretStr = Field(default=SecretStr(""), validation_alias=_env("OTLP_HEADERS"))
    trace_spool_max_bytes: int = Field(default=256 << 20, gt=0, validation_alias=_env("TRACE_SPOOL_MAX_BYTES"))
    trace_flush_s: float = Field(default=1.0, gt=0, validation_alias=_env("TRACE_FLUSH_S"))

    @model_validator(mode="after")
    def _result_bytes_above_reply(self) -> AccountingSettings:
        if self.query_max_result_bytes < 32 * self.query_max_reply_bytes:
            raise ValueError("query_max_result_bytes must be at least 32 times query_max_reply_bytes")
        return self

    @property
    def nats_servers(self) -> list[str]:
        """`nats_url` may list several cluster members, comma-separated."""
        return [u.strip() for u in self.nats_url.split(",") if u.strip()]

    def nats_link(self) -> NatsLink:
        return NatsLink(tuple(self.nats_servers), "accounting", self.subject_prefix, self.nats_nkey_seed_file)
