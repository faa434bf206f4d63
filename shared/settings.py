"""Settings every service reads at startup (env prefix per service), passed down from there."""

from __future__ import annotations

import os
import socket

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.natsconn import NatsLink
from shared.permissions import Role


class ServiceSettings(BaseSettings):
    """Common to all services; each service subclasses it with its own env prefix."""

    model_config = SettingsConfigDict(env_prefix="GATEHOUSE_", extra="ignore", frozen=True)

    nats_url: str = "nats://127.0.0.1:4222"
    # the file holding this service's NATS NKey seed (its role's credential); empty: connect unauthenticated
    nats_nkey_seed_file: str = ""
    config: str = "deploy/gatehouse.yaml"
    subject_prefix: str = "gh"
    log_level: str = "INFO"
    # NATS request/publish timeouts default to 0.5 s in the clients; every hop sets its own
    nats_timeout_s: float = 5.0
    # local state: events JetStream cannot take yet are spooled in <data_dir>/spool/<service>/ (the launcher
    # passes its own data dir; in a container, a volume that outlives the process)
    data_dir: str = ".gatehouse"
    # disk cap of one process's spool; past it new events are dropped with an error log
    spool_max_bytes: int = Field(default=1 << 30, gt=0)
    # how often spooled events are fsync'ed (0: after every write, off the event loop); a power loss can
    # lose what was spooled since, a killed process nothing that was spooled
    spool_fsync_s: float = Field(default=1.0, ge=0)
    # events waiting for JetStream in memory before they overflow to the spool
    events_max_in_memory: int = Field(default=10_000, gt=0)
    # this process's name in the records it contributes to (which replica served a request): by default
    # the host name (a pod's name in Kubernetes) and process id; the launcher names its children `<service>-<n>`
    replica: str = Field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}", min_length=1)

    # telemetry (shared/telemetry.py). Metrics are recorded when on, and served on metrics_host:metrics_port
    # when a port is set (0: none; ingress also serves /metrics on its own port; `gatehouse up` assigns ports)
    metrics_enabled: bool = True
    metrics_host: str = "127.0.0.1"
    metrics_port: int = Field(default=0, ge=0, le=65535)
    # spans: recorded when on; a new trace is sampled with this ratio, a continued one as its traceparent says
    tracing_enabled: bool = True
    trace_sample_ratio: float = Field(default=1.0, ge=0, le=1)
    # spans go to ClickHouse (the `spans` table, through their own stream), and over OTLP/HTTP when an
    # endpoint is set (e.g. http://collector:4318/v1/traces), with these headers (`k=v,k2=v2`; may carry a token)
    trace_store: bool = True
    otlp_endpoint: str = ""
    otlp_headers: SecretStr = SecretStr("")
    # how often finished spans are shipped (and queued metrics folded); a span batch is one JetStream message
    trace_flush_s: float = Field(default=1.0, gt=0)
    # disk cap of the spool of spans waiting for JetStream (apart from the events' spool)
    trace_spool_max_bytes: int = Field(default=256 << 20, gt=0)

    @property
    def nats_servers(self) -> list[str]:
        """`nats_url` may list several cluster members, comma-separated."""
        return [u.strip() for u in self.nats_url.split(",") if u.strip()]

    def nats_link(self, role: Role) -> NatsLink:
        return NatsLink(tuple(self.nats_servers), role, self.subject_prefix, self.nats_nkey_seed_file)
