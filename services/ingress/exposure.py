"""Refuse to serve the public development key on an address that other machines can reach."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping

from shared.config import GatehouseConfig, hash_key

# the key the shipped config and the README use; anyone who has read them knows it
DEV_KEY = "sk-gatehouse-dev"
DEV_KEY_SHA256 = hash_key(DEV_KEY)


def is_loopback(host: str) -> bool:
    """True only for addresses this machine alone can reach (a hostname other than localhost is not)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def dev_key_exposure(config: GatehouseConfig, host: str, environ: Mapping[str, str] | None = None) -> str:
    """Why serving this config on `host` is refused ('' when it is fine)."""
    if is_loopback(host):
        return ""
    key = config.key_hashes(dict(environ) if environ is not None else None).get(DEV_KEY_SHA256)
    if key is None:
        return ""
    return (
        f"refusing to serve the public development key {DEV_KEY!r} (keys[{key.id}]) on {host}, which is not a "
        "loopback address: remove it from the config (and use your own keys), bind to 127.0.0.1, or set "
        "GATEHOUSE_INGRESS_ALLOW_DEV_KEY=1 if this is deliberate"
    )
