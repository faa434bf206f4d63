"""Settings every service reads at startup (env prefix per service), passed down from there."""

from __future__ import annotations

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

    @property
    def nats_servers(self) -> list[str]:
        """`nats_url` may list several cluster members, comma-separated."""
        return [u.strip() for u in self.nats_url.split(",") if u.strip()]

    def nats_link(self, role: Role) -> NatsLink:
        return NatsLink(tuple(self.nats_servers), role, self.subject_prefix, self.nats_nkey_seed_file)
