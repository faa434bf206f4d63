"""The environment each process of the one-machine stack gets: what it needs to run, and its own secrets only.

Provider keys (the config's `api_key_env` names, `AWS_*` where a Bedrock provider is configured, Google's
credential variables where a Vertex one is) go to the router alone, API keys read from the environment
(`keys[].env`) to ingress and the batch service (which authenticates the keys of batch jobs) alone; a
`GATEHOUSE_<SERVICE>_*` variable goes to that service only; NATS credentials are set by the launcher, one
role's seed file per service. Everything else stays behind.
"""

from __future__ import annotations

from collections.abc import Mapping

from shared.config import GatehouseConfig
from shared.permissions import Role

SERVICES: tuple[Role, ...] = ("accounting", "router", "mcp", "guard", "batch", "ingress")

# what any Python process needs to start and behave (locale, temp dir, interpreter, TLS trust store)
_BASE = frozenset(
    {
        "PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "VIRTUAL_ENV",
        "LD_LIBRARY_PATH", "SSL_CERT_FILE", "SSL_CERT_DIR",
    }
)  # fmt: skip
_BASE_PREFIXES = ("LC_", "PYTHON")
# the router calls providers, possibly through the company's proxy
_PROXY = frozenset({n for name in ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY") for n in (name, name.lower())})


def base_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The variables every child (nats-server included) may see."""
    return {k: v for k, v in environ.items() if k in _BASE or k.startswith(_BASE_PREFIXES)}


def provider_key_names(config: GatehouseConfig) -> frozenset[str]:
    names = {p.api_key_env for p in config.providers.values() if p.api_key_env}
    names |= {d.api_key_env for m in config.models for d in m.deployments if d.api_key_env}
    return frozenset(names)


def mcp_credential_names(config: GatehouseConfig) -> frozenset[str]:
    """What the mcp stage holds for upstream MCP servers: header values, OAuth client secrets, stdio env."""
    names: set[str] = set()
    for server in config.mcp.servers.values():
        names |= set(server.headers_from_env.values()) | set(server.env_from.values())
        if server.oauth is not None:
            names.add(server.oauth.client_secret_env)
    return frozenset(names)


def api_key_names(config: GatehouseConfig) -> frozenset[str]:
    return frozenset(k.env for k in config.keys if k.env)


def webhook_secret_names(config: GatehouseConfig) -> frozenset[str]:
    return frozenset(n for w in config.webhooks for n in (w.url_env, w.secret_env) if n)


def _gatehouse_setting_for(service: str, name: str) -> bool:
    """A GATEHOUSE_* variable this service may read: common ones and its own, never another's or a credential."""
    if not name.startswith("GATEHOUSE_") or name.endswith("NKEY_SEED_FILE"):
        return False
    return not any(name.startswith(f"GATEHOUSE_{other.upper()}_") for other in SERVICES if other != service)


def service_env(
    service: str, environ: Mapping[str, str], config: GatehouseConfig, launcher_set: Mapping[str, str]
) -> dict[str, str]:
    """The environment of one service process; `launcher_set` (NATS URL, credential, config path…) wins."""
    providers, api_keys = provider_key_names(config), api_key_names(config)
    upstream_mcp = mcp_credential_names(config)
    admin_key = config.governance.admin_key_env  # the admin API's secret: ingress only
    env = base_env(environ)
    for name, value in environ.items():
        if name in providers or name in api_keys or name in upstream_mcp or name == admin_key:
            continue
        if _gatehouse_setting_for(service, name):
            env[name] = value
    if service == "router":
        env.update({k: v for k, v in environ.items() if k in providers or k in _PROXY})
        if any(p.kind == "bedrock" for p in config.providers.values()):
            # the AWS credential chain (keys, profile, shared files, SSO, web identity, container role)
            env.update({k: v for k, v in environ.items() if k.startswith("AWS_")})
        if any(p.kind == "vertex" for p in config.providers.values()):
            # Google's Application Default Credentials
            names = ("GOOGLE_APPLICATION_CREDENTIALS", "GOOGLE_CLOUD_PROJECT", "CLOUDSDK_CONFIG")
            env.update({k: v for k, v in environ.items() if k in names})
    if service == "ingress":
        env.update({k: v for k, v in environ.items() if k in api_keys or k == admin_key})
    if service == "batch":
        env.update({k: v for k, v in environ.items() if k in api_keys})
    if service == "mcp":  # upstream MCP credentials stay in the stage that holds the upstream sessions
        env.update({k: v for k, v in environ.items() if k in upstream_mcp or k in _PROXY})
    if service == "accounting":
        # webhook URLs and signing secrets (the webhook dispatcher runs in accounting)
        env.update({k: v for k, v in environ.items() if k in webhook_secret_names(config)})
    env.update(launcher_set)
    return env
