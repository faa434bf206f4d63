"""The gatehouse YAML config: pydantic models that reject unknown keys, and a loader that names file and line."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationError, field_validator, model_validator

from shared.counters import DUPLICATE_WINDOW_S
from shared.guard_config import GuardrailsConfig
from shared.leases import MAX_USE_S, MIN_LEASE_GRACE_S
from shared.mcp_config import McpConfig, RunLimits
from shared.routing_config import ModelRouting, RoutingConfig
from shared.schemas.params import check_params

ProviderKind = Literal["mock", "openai", "azure", "anthropic", "gemini", "mistral", "bedrock", "cohere", "vertex"]
# named kinds whose translator does not exist yet: refused at load, not at the first request
_UNIMPLEMENTED_KINDS: frozenset[str] = frozenset()

MiB = 1024 * 1024

# the client protocol a provider kind takes unchanged (services.router.native); others get a translation
NATIVE_PROTOCOL: dict[str, str] = {"anthropic": "anthropic-messages", "openai": "openai-responses"}


# clock skew between ingress and accounting, retries and delivery delays, beyond a lease's own span
WINDOW_MARGIN_S = 60.0


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    max_body_bytes: int = Field(default=4 * 1024 * 1024, gt=0)
    request_timeout_s: float = Field(default=600.0, gt=0)
    # how long ingress waits for the first reply from the pipeline before answering 504
    first_reply_timeout_s: float = Field(default=120.0, gt=0)
    # the router sends a heartbeat every few seconds while it serves a request; silence this long means
    # the request was lost (e.g. its router replica died) and the client gets a 502 instead of waiting
    heartbeat_timeout_s: float = Field(default=15.0, gt=0)


class ProviderConfig(_Strict):
    """A provider account: its wire format, where it is, and which env var holds its key."""

    kind: ProviderKind
    api_base: str | None = None
    api_key_env: str | None = None
    api_version: str | None = None
    region: str | None = None
    # vertex: the Google Cloud project whose Vertex AI endpoint serves the models
    project: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    # true: the key variable may be unset (e.g. in dev); its deployments then fail over with 503 at
    # request time. false (the default): a model using this provider without its key fails startup.
    optional: bool = False
    timeout_s: float = Field(default=120.0, gt=0)
    connect_timeout_s: float = Field(default=5.0, gt=0)
    # a body the router buffers (non-stream answers, error bodies) may not decode to more than this
    max_response_bytes: int = Field(default=32 * MiB, gt=0, le=1024 * MiB)
    # one server-sent event (or one line of one) of a stream; a stream as a whole is bounded by timeout_s
    max_sse_event_bytes: int = Field(default=1 * MiB, gt=0, le=64 * MiB)
    # gzip/deflate answers may not inflate more than this many times their compressed size (past 1 MiB)
    max_inflate_ratio: int = Field(default=100, ge=1, le=100_000)
    # a client that speaks this provider's own protocol (Anthropic Messages to `anthropic`, OpenAI Responses
    # to `openai`) has its request sent unchanged; turn off for an OpenAI-compatible server without /responses
    passthrough: bool = True
    # mock provider only: simulated latency before the first token, and between stream chunks
    mock_latency_ms: float = Field(default=0.0, ge=0)
    mock_chunk_delay_ms: float = Field(default=0.0, ge=0)
    # routing: a stream's first token may take this long (default: routing.ttft_timeout_s)
    ttft_timeout_s: float | None = Field(default=None, gt=0)

    @field_validator("kind")
    @classmethod
    def _implemented(cls, kind: str) -> str:
        if kind in _UNIMPLEMENTED_KINDS:
            raise ValueError(f"provider kind {kind!r} has no translator in this version of gatehouse")
        return kind

    @model_validator(mode="after")
    def _event_within_body(self) -> ProviderConfig:
        if self.max_sse_event_bytes > self.max_response_bytes:
            raise ValueError("max_sse_event_bytes cannot exceed max_response_bytes")
        return self

    @property
    def native_protocol(self) -> str:
        """The client protocol whose requests this provider is sent unchanged ('' for none)."""
        return NATIVE_PROTOCOL.get(self.kind, "") if self.passthrough else ""


class PriceConfig(_Strict):
    """A negotiated price for a deployment, in USD per million tokens (instead of the list price)."""

    input_per_mtok: float = Field(ge=0)
    output_per_mtok: float = Field(ge=0)
    cached_input_per_mtok: float | None = Field(default=None, ge=0)
    cache_write_per_mtok: float | None = Field(default=None, ge=0)


class DeploymentConfig(_Strict):
    """One place a model can be served from; fields left out come from the provider."""

    provider: str
    model: str
    name: str = ""
    api_base: str | None = None
    api_key_env: str | None = None
    api_version: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    timeout_s: float | None = Field(default=None, gt=0)
    # default request params (the client's values win): a documented one must fit its field's type
    params: dict[str, JsonValue] = Field(default_factory=dict)
    weight: int = Field(default=1, ge=1)
    price: PriceConfig | None = None
    # routing: a stream's first token may take this long (default: the provider's, else routing.ttft_timeout_s)
    ttft_timeout_s: float | None = Field(default=None, gt=0)

    @field_validator("params")
    @classmethod
    def _typed_params(cls, params: dict[str, JsonValue]) -> dict[str, JsonValue]:
        check_params(params)
        return params

    @property
    def id(self) -> str:
        return self.name or f"{self.provider}/{self.model}"


class ModelConfig(_Strict):
    """A client-facing model name and the ordered deployments that serve it."""

    name: str
    aliases: list[str] = Field(default_factory=list)
    kind: Literal["chat", "embeddings"] = "chat"
    deployments: list[DeploymentConfig] = Field(min_length=1)
    owned_by: str = "gatehouse"
    # the most output tokens one answer can have; the worst case a budget reserves when a request
    # names no max_tokens (default: what the model's context window leaves)
    max_output_tokens: int | None = Field(default=None, gt=0)
    # routing (shared/routing_config.py): this model's strategy and attempt budget, and the models tried
    # after its own deployments: on any retryable failure, when the prompt is too long for it, when the
    # provider refuses the content
    routing: ModelRouting = Field(default_factory=ModelRouting)
    fallbacks: list[str] = Field(default_factory=list)
    context_window_fallbacks: list[str] = Field(default_factory=list)
    content_policy_fallbacks: list[str] = Field(default_factory=list)
    # a negotiated price for every deployment of the model that has no `price` of its own
    price: PriceConfig | None = None


class KeyConfig(_Strict):
    """A static API key; stored as its SHA-256, or read from an environment variable at startup."""

    id: str
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    env: str | None = None
    team: str = ""
    project: str = ""
    user: str = ""
    policy: str = ""
    models: list[str] = Field(default_factory=list, description="allowed model names; empty allows all")
    # the key may choose a routing strategy per request (x-gatehouse-route header or `gatehouse_route`)
    route_override: bool = False
    # MCP tools (namespaced `<server>__<tool>` globs): allowed (empty allows all) and denied (deny wins)
    tools: list[str] = Field(default_factory=list)
    tools_deny: list[str] = Field(default_factory=list)
    tool_calls_per_minute: int | None = Field(default=None, gt=0)
    runs: RunLimits | None = None

    @model_validator(mode="after")
    def _one_source(self) -> KeyConfig:
        if (self.sha256 is None) == (self.env is None):
            raise ValueError("give exactly one of `sha256` or `env`")
        return self


class AccountingConfig(_Strict):
    clickhouse_dsn: str = "chdb://.gatehouse/clickhouse"
    # events per insert at most (fewer when flush_interval_s passes first): larger inserts cost chDB less per
    # row (parts, merges, the rollups' views), measured in bench/accounting_ingest.py
    batch_size: int = Field(default=20000, gt=0)
    flush_interval_s: float = Field(default=1.0, gt=0)


class GovernanceConfig(_Strict):
    """Virtual keys, quotas and budgets (the records themselves live in NATS KV; see shared/governance.py)."""

    # the environment variable holding the admin key (the admin API and CLI's master credential)
    admin_key_env: str = "GATEHOUSE_ADMIN_KEY"
    # quotas when the counters cannot be reached: open (serve, uncounted) or closed (503); budgets
    # always fail closed
    quotas_when_unavailable: Literal["open", "closed"] = "open"
    # how long a reservation outlives its request's deadline before it is released (a crashed replica)
    reservation_grace_s: float = Field(default=30.0, gt=0)
    # each ingress replica leases blocks of requests-per-minute and budget counters and admits from them
    # locally (no round trip per request; bounded under-admission, never over: docs/governance.md); false:
    # every request counted exactly on the shared counters
    leases: bool = True
    # budget alerts are also POSTed here (JSON, Slack-compatible `text`), when set
    alert_webhook_url: str | None = None


class BatchConfig(_Strict):
    """Batch jobs (services/batch): the OpenAI Batch API's files and the work queue's limits."""

    # the largest JSONL file `POST /v1/files` takes (purpose `batch`), and the most items a job may have
    max_file_bytes: int = Field(default=100 * MiB, gt=0, le=2048 * MiB)
    max_items: int = Field(default=50_000, gt=0)
    # one item's request body; larger ones are reported in the job's error file (default: server.max_body_bytes)
    max_item_bytes: int | None = Field(default=None, gt=0)
    # the longest `completion_window` a job may ask for (OpenAI's only value is `24h`)
    max_completion_window_s: float = Field(default=7 * 86400, gt=0)
    # items of one job in flight at once (all batch replicas together), unless the job asks for fewer
    job_concurrency: int = Field(default=32, gt=0, le=1024)
    # items of one key in flight at once, per batch replica (all its jobs together)
    key_concurrency: int = Field(default=64, gt=0)
    # tries of an item whose failure may pass (429, 5xx after the router's own failover), before it fails
    item_attempts: int = Field(default=3, ge=1, le=10)
    # how long files and item results are kept
    retention_days: float = Field(default=30.0, gt=0)


HookPoint = Literal["before_guard", "after_guard", "before_dispatch", "after_response", "on_event"]
HOOK_POINTS: tuple[HookPoint, ...] = ("before_guard", "after_guard", "before_dispatch", "after_response", "on_event")
WebhookEvent = Literal["budget_alert", "request_blocked", "deployment_down"]


class PluginConfig(_Strict):
    """A Python plugin (shared/plugins.py): where its factory is, which hooks it runs, and how it may fail."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
    # `package.module:factory`, or the name of an entry point in the `gatehouse.plugins` group
    path: str = Field(default="", pattern=r"^$|^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
    entry_point: str = ""
    hooks: list[HookPoint] = Field(min_length=1)
    # each hook call may take this long; past it the call is cancelled and counts as a failure
    timeout_ms: float = Field(default=100.0, gt=0, le=60_000)
    # a failure (raise, timeout, a result its point does not allow): closed → 503 plugin_error; open → go on
    fail: Literal["open", "closed"] = "open"
    # request headers the plugin may read at ingress (credentials are never shown, whatever is listed)
    headers: list[str] = Field(default_factory=list, max_length=64)
    # passed to the factory as its only argument
    options: dict[str, JsonValue] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_source(self) -> PluginConfig:
        if bool(self.path) == bool(self.entry_point):
            raise ValueError("give exactly one of `path` (package.module:factory) or `entry_point`")
        if len(set(self.hooks)) != len(self.hooks):
            raise ValueError("a hook is listed twice")
        return self


class WebhookConfig(_Strict):
    """An HTTP endpoint told about gateway events (services/accounting/webhooks.py), signed and retried."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")
    # the URL, or the environment variable holding it (a Slack webhook URL is a secret): exactly one
    url: str | None = Field(default=None, pattern=r"^https?://")
    url_env: str | None = None
    # the environment variable holding the HMAC-SHA256 signing secret (unsigned when unset)
    secret_env: str | None = None
    # the signatures a signed delivery carries: `v2` (over the delivery id, timestamp and body: what receivers
    # check) and the deprecated `v1` (timestamp and body only, so it holds under any webhook-id); leave `v1` out
    # once the receiver checks `v2=` (shared/webhook_signing.py)
    signatures: tuple[Literal["v2", "v1"], ...] = ("v2", "v1")
    events: list[WebhookEvent] = Field(min_length=1)
    # the body: `json` (the gatehouse event envelope), or `package.module:function` (event dict → body dict),
    # e.g. gatehouse.plugins.slack_alerts:format_event
    format: str = Field(default="json", pattern=r"^json$|^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
    timeout_s: float = Field(default=10.0, gt=0, le=120)
    # tries in all (the first and the retries); then the delivery is recorded as dead
    max_attempts: int = Field(default=6, ge=1, le=20)
    backoff_s: float = Field(default=1.0, gt=0, le=600)
    max_backoff_s: float = Field(default=60.0, gt=0, le=3600)

    @model_validator(mode="after")
    def _one_url(self) -> WebhookConfig:
        if (self.url is None) == (self.url_env is None):
            raise ValueError("give exactly one of `url` or `url_env`")
        if "v2" not in self.signatures or len(set(self.signatures)) != len(self.signatures):
            raise ValueError("`signatures` lists `v2` (the one receivers check), and `v1` at most once besides")
        return self


class GatehouseConfig(_Strict):
    server: ServerConfig = Field(default_factory=ServerConfig)
    keys: list[KeyConfig] = Field(default_factory=list)
    providers: dict[str, ProviderConfig] = Field(default_factory=dict)
    models: list[ModelConfig] = Field(default_factory=list)
    guardrails: GuardrailsConfig = Field(default_factory=GuardrailsConfig)
    accounting: AccountingConfig = Field(default_factory=AccountingConfig)
    governance: GovernanceConfig = Field(default_factory=GovernanceConfig)
    routing: RoutingConfig = Field(default_factory=RoutingConfig)
    batch: BatchConfig = Field(default_factory=BatchConfig)
    mcp: McpConfig = Field(default_factory=McpConfig)
    # Python hooks in the pipeline (docs/plugins.md) and webhooks told about gateway events
    plugins: list[PluginConfig] = Field(default_factory=list)
    webhooks: list[WebhookConfig] = Field(default_factory=list)

    @model_validator(mode="after")
    def _references(self) -> GatehouseConfig:
        self._fallback_references()
        seen: set[str] = set()
        for i, model in enumerate(self.models):
            for name in (model.name, *model.aliases):
                if name in seen:
                    raise ValueError(f"models[{i}]: model name or alias {name!r} is defined twice")
                seen.add(name)
            for j, dep in enumerate(model.deployments):
                if dep.provider not in self.providers:
                    raise ValueError(
                        f"models[{i}].deployments[{j}].provider: unknown provider {dep.provider!r} "
                        f"(known: {', '.join(sorted(self.providers)) or 'none'})"
                    )
        ids = [k.id for k in self.keys]
        if len(ids) != len(set(ids)):
            raise ValueError("keys: every key needs a distinct `id`")
        for names, what in (([p.name for p in self.plugins], "plugins"), ([w.name for w in self.webhooks], "webhooks")):
            if len(names) != len(set(names)):
                raise ValueError(f"{what}: every entry needs a distinct `name`")
        for k in self.keys:
            if k.policy and k.policy not in self.guardrails.policies:
                raise ValueError(f"keys[{k.id}].policy: unknown guardrail policy {k.policy!r}")
        for field in ("input_policy", "output_policy"):
            name = getattr(self.mcp, field)
            if name and name not in self.guardrails.policies:
                raise ValueError(f"mcp.{field}: unknown guardrail policy {name!r}")
        self._within_duplicate_window()
        return self

    def _within_duplicate_window(self) -> None:
        """A budget lease's give-back and accounting's release of it carry the same increment ids (whichever comes
        first counts): they may come as far apart as a request's timeout plus the lease's grace and use, and the
        counters deduplicate ids only that long (shared/counters.py). Without leases nothing is given back that way,
        and a longer timeout is fine."""
        if not self.governance.leases:
            return
        grace = max(self.governance.reservation_grace_s, MIN_LEASE_GRACE_S)
        span = self.server.request_timeout_s + grace + MAX_USE_S + WINDOW_MARGIN_S
        if span >= DUPLICATE_WINDOW_S:
            raise ValueError(
                f"server.request_timeout_s ({self.server.request_timeout_s:g}) + governance.reservation_grace_s "
                f"({grace:g}) + {MAX_USE_S + WINDOW_MARGIN_S:g} s of lease use and margin is {span:g} s, at least the "
                f"budget counters' duplicate window of {DUPLICATE_WINDOW_S} s: a lease could be given back twice. "
                f"Keep the sum under {DUPLICATE_WINDOW_S} s, or set governance.leases: false"
            )

    def _fallback_references(self) -> None:
        """Every fallback names a model of the same kind (chat or embeddings), and not the model itself."""
        index = self.model_index()
        for i, model in enumerate(self.models):
            for field in ("fallbacks", "context_window_fallbacks", "content_policy_fallbacks"):
                for j, name in enumerate(getattr(model, field)):
                    target = index.get(name)
                    if target is None:
                        raise ValueError(f"models[{i}].{field}[{j}]: unknown model {name!r}")
                    if target.name == model.name:
                        raise ValueError(f"models[{i}].{field}[{j}]: a model cannot fall back to itself")
                    if target.kind != model.kind:
                        raise ValueError(f"models[{i}].{field}[{j}]: {name!r} is a {target.kind} model")

    def model_index(self) -> dict[str, ModelConfig]:
        """Every client-facing name (model names and aliases) → its model."""
        index: dict[str, ModelConfig] = {}
        for model in self.models:
            for name in (model.name, *model.aliases):
                index[name] = model
        return index

    def missing_provider_keys(self, environ: Mapping[str, str]) -> list[tuple[tuple[str | int, ...], str]]:
        """(config location, message) for every key variable a model needs that `environ` lacks or has empty.

        Only providers some model deploys to count, and `optional` providers never do: a key that nothing
        calls cannot break a request, and an optional one is allowed to be absent.
        """
        problems: list[tuple[tuple[str | int, ...], str]] = []
        seen: set[tuple[str, str]] = set()
        for i, model in enumerate(self.models):
            for j, dep in enumerate(model.deployments):
                provider = self.providers[dep.provider]
                env = dep.api_key_env or provider.api_key_env
                if not env or provider.optional or environ.get(env) or (dep.provider, env) in seen:
                    continue
                seen.add((dep.provider, env))
                if dep.api_key_env:
                    loc: tuple[str | int, ...] = ("models", i, "deployments", j, "api_key_env")
                else:
                    loc = ("providers", dep.provider, "api_key_env")
                problems.append((loc, f"provider {dep.provider!r}: environment variable {env} is not set"))
        return problems

    def native_protocols(self, model: ModelConfig) -> frozenset[str]:
        """The client protocols some deployment of `model` takes unchanged."""
        found = (self.providers[d.provider].native_protocol for d in model.deployments)
        return frozenset(p for p in found if p)

    def key_hashes(self, environ: dict[str, str] | None = None) -> dict[str, KeyConfig]:
        """SHA-256 of every usable key → its config (env-sourced keys whose variable is unset are skipped)."""
        env = os.environ if environ is None else environ
        out: dict[str, KeyConfig] = {}
        for k in self.keys:
            if k.sha256:
                out[k.sha256] = k
            elif k.env and env.get(k.env):
                out[hash_key(env[k.env])] = k
        return out


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class ConfigError(Exception):
    """The config file is missing, not YAML, or does not validate; the message names file, line and field."""


def _line_map(node: yaml.Node, path: tuple[str | int, ...], out: dict[tuple[str | int, ...], int]) -> None:
    out[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value
            out[(*path, key)] = key_node.start_mark.line + 1
            _line_map(value_node, (*path, key), out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _line_map(item, (*path, i), out)


def _where(lines: dict[tuple[str | int, ...], int], loc: tuple[str | int, ...]) -> int:
    return next((lines[loc[:n]] for n in range(len(loc), -1, -1) if loc[:n] in lines), 1)


def parse_config(text: str, source: str = "<config>", environ: Mapping[str, str] | None = None) -> GatehouseConfig:
    """Validate config text; every problem is reported as ``source:line: field: message``.

    With `environ` (the router, which holds provider keys), every key variable a model needs must be set.
    """
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}:1: the config must be a mapping at the top level")
    lines: dict[tuple[str | int, ...], int] = {}
    if node is not None:
        _line_map(node, (), lines)
    try:
        config = GatehouseConfig.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = tuple(err["loc"])
            field = ".".join(str(p) for p in loc) or "(top level)"
            problems.append(f"{source}:{_where(lines, loc)}: {field}: {err['msg']}")
        raise ConfigError("invalid config:\n  " + "\n  ".join(problems)) from exc
    missing = config.missing_provider_keys(environ) if environ is not None else []
    if missing:
        problems = [f"{source}:{_where(lines, loc)}: {'.'.join(map(str, loc))}: {msg}" for loc, msg in missing]
        raise ConfigError("invalid config:\n  " + "\n  ".join(problems))
    return config


def load_config(path: str | Path, environ: Mapping[str, str] | None = None) -> GatehouseConfig:
    """Load and validate the config file; with `environ`, also require the provider keys models need."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {p}: {exc.strerror}") from exc
    return parse_config(text, str(p), environ)
