"""Ingress settings: the common GATEHOUSE_* ones plus GATEHOUSE_INGRESS_*."""

from __future__ import annotations

from pydantic import SecretStr

from shared.settings import ServiceSettings


class IngressSettings(ServiceSettings):
    # host/port override the config file's server section when set (the launcher uses them)
    ingress_host: str | None = None
    ingress_port: int | None = None
    # serve the public development key even when bound beyond loopback (a deliberate demo, never production)
    ingress_allow_dev_key: bool = False
    # the bearer token `/metrics` on the ingress port asks for when ingress listens beyond loopback
    # (without one it answers 403 there; the metrics port, GATEHOUSE_METRICS_PORT, needs none)
    ingress_metrics_token: SecretStr = SecretStr("")
