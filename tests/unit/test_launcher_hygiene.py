"""What the one-machine launcher hands out: each child's environment, the credential files, and the
refusal to serve the public dev key beyond loopback."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gatehouse.childenv import base_env, service_env
from gatehouse.cli import app
from gatehouse.credentials import ensure_credentials, public_key
from services.ingress.exposure import DEV_KEY, dev_key_exposure, is_loopback
from shared.config import GatehouseConfig, hash_key

CONFIG = GatehouseConfig.model_validate(
    {
        "keys": [{"id": "dev", "sha256": hash_key(DEV_KEY)}, {"id": "ci", "env": "GATEHOUSE_API_KEY"}],
        "providers": {
            "openai": {"kind": "openai", "api_key_env": "OPENAI_API_KEY"},
            "azure": {"kind": "azure", "api_key_env": "AZURE_KEY"},
        },
        "models": [
            {"name": "m", "deployments": [{"provider": "openai", "model": "x", "api_key_env": "OTHER_OPENAI_KEY"}]}
        ],
    }
)
ENVIRON = {
    "PATH": "/usr/bin",
    "HOME": "/home/me",
    "LANG": "C.UTF-8",
    "LC_ALL": "C.UTF-8",
    "PYTHONPATH": "/src",
    "HTTPS_PROXY": "http://proxy:3128",
    "OPENAI_API_KEY": "sk-provider",
    "AZURE_KEY": "az-secret",
    "OTHER_OPENAI_KEY": "sk-other",
    "GATEHOUSE_API_KEY": "sk-client",
    "AWS_SECRET_ACCESS_KEY": "aws",
    "GATEHOUSE_LOG_LEVEL": "DEBUG",
    "GATEHOUSE_ROUTER_HEARTBEAT_S": "1",
    "GATEHOUSE_ACCOUNTING_CLICKHOUSE_DSN": "http://user:pw@ch:8123/db",
    "GATEHOUSE_NATS_NKEY_SEED_FILE": "/home/me/admin.nk",
}


def env_of(service: str) -> dict[str, str]:
    return service_env(service, ENVIRON, CONFIG, {"GATEHOUSE_NATS_NKEY_SEED_FILE": f"/data/creds/{service}.nk"})


def test_provider_keys_reach_the_router_only_and_api_keys_ingress_only() -> None:
    provider_keys = {"OPENAI_API_KEY", "AZURE_KEY", "OTHER_OPENAI_KEY"}
    router = env_of("router")
    assert provider_keys <= set(router)
    assert router["HTTPS_PROXY"] == "http://proxy:3128"
    assert "GATEHOUSE_API_KEY" not in router
    for service in ("ingress", "guard", "accounting"):
        env = env_of(service)
        assert not provider_keys & set(env), service
        assert "HTTPS_PROXY" not in env
        assert ("GATEHOUSE_API_KEY" in env) == (service == "ingress")


def test_each_service_gets_common_and_its_own_settings_and_its_own_credential() -> None:
    for service in ("ingress", "guard", "router", "accounting"):
        env = env_of(service)
        assert {"PATH", "HOME", "LANG", "LC_ALL", "PYTHONPATH", "GATEHOUSE_LOG_LEVEL"} <= set(env)
        assert "AWS_SECRET_ACCESS_KEY" not in env
        assert env["GATEHOUSE_NATS_NKEY_SEED_FILE"] == f"/data/creds/{service}.nk"  # never the caller's admin key
        assert ("GATEHOUSE_ROUTER_HEARTBEAT_S" in env) == (service == "router")
        assert ("GATEHOUSE_ACCOUNTING_CLICKHOUSE_DSN" in env) == (service == "accounting")
    assert set(base_env(ENVIRON)) == {"PATH", "HOME", "LANG", "LC_ALL", "PYTHONPATH"}


def test_credentials_are_private_made_once_and_kept(tmp_path: Path) -> None:
    creds = tmp_path / "data" / "creds"
    first = ensure_credentials(creds)
    assert stat.S_IMODE(creds.stat().st_mode) == 0o700
    for key in first.values():
        assert stat.S_IMODE(key.seed_file.stat().st_mode) == 0o600
        assert key.public_key.startswith("U") and key.public_key.encode() not in key.seed_file.read_bytes()
    assert len({k.public_key for k in first.values()}) == len(first)
    first["router"].seed_file.chmod(0o644)
    again = ensure_credentials(creds)
    assert {r: k.public_key for r, k in again.items()} == {r: k.public_key for r, k in first.items()}
    assert stat.S_IMODE(again["router"].seed_file.stat().st_mode) == 0o600
    broken = creds / "broken.nk"
    broken.write_text("not a seed")
    with pytest.raises(ValueError, match=r"broken\.nk does not hold a NATS user NKey seed"):
        public_key(broken)


LOOPBACK = [("127.0.0.1", True), ("localhost", True), ("::1", True), ("127.0.0.2", True), ("0.0.0.0", False)]
LOOPBACK += [("::", False), ("10.0.0.5", False), ("gateway.internal", False), ("", False)]


@pytest.mark.parametrize(("host", "loopback"), LOOPBACK)
def test_loopback_addresses(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_the_dev_key_is_refused_beyond_loopback() -> None:
    assert dev_key_exposure(CONFIG, "127.0.0.1", {}) == ""
    refused = dev_key_exposure(CONFIG, "0.0.0.0", {})
    assert "sk-gatehouse-dev" in refused and "keys[dev]" in refused and "GATEHOUSE_INGRESS_ALLOW_DEV_KEY" in refused
    no_dev = CONFIG.model_copy(update={"keys": CONFIG.keys[1:]})
    assert dev_key_exposure(no_dev, "0.0.0.0", {"GATEHOUSE_API_KEY": "sk-real"}) == ""
    # the same key arriving through an environment variable is the same public key
    assert "keys[ci]" in dev_key_exposure(no_dev, "0.0.0.0", {"GATEHOUSE_API_KEY": DEV_KEY})


def test_hash_key_reads_the_key_from_stdin_when_not_given() -> None:
    runner = CliRunner()
    piped = runner.invoke(app, ["hash-key"], input="sk-from-stdin\n")
    assert piped.exit_code == 0, piped.output
    assert piped.output.strip() == hash_key("sk-from-stdin")
    assert runner.invoke(app, ["hash-key", "sk-arg"]).output.strip() == hash_key("sk-arg")
    assert runner.invoke(app, ["hash-key"], input="").exit_code == 2


def test_a_metrics_port_is_never_one_of_the_stacks_own_ports(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ingress binds its port only once its process runs, so the OS may hand that free port out again when the
    launcher picks the other services' metrics ports (an e2e run once found a metrics page on the ingress URL)."""
    import socket

    from gatehouse import launcher

    with socket.socket() as held:  # a port nothing listens on yet, as the ingress port is before ingress starts
        held.bind(("127.0.0.1", 0))
        ingress = int(held.getsockname()[1])
    offered = iter([ingress, ingress, ingress + 7])
    monkeypatch.setattr(launcher, "free_port", lambda: next(offered))
    assert launcher.metrics_port(frozenset({ingress})) == ingress + 7
    assert launcher.metrics_port(frozenset({ingress, ingress + 1}), start=ingress) >= ingress + 2
