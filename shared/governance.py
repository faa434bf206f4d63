"""Who may do what, and how much: organizations, teams, projects, users and virtual keys, with the limits
each level carries. These records live in a NATS KV bucket (one JSON value per entity) that every
ingress replica mirrors in memory, and the admin API writes.

Every level may carry `Limits`: allowed models (names, aliases, glob patterns), a guardrail policy (a
team can lock it so its keys cannot choose another), quotas (requests and tokens per minute,
concurrent requests), budgets in USD per period, default and maximum request parameters, and tags.
A key inherits from its project, team and org: every level's model list must allow a model, every
level's quotas and budgets are enforced (so the tightest wins), the lowest parameter cap wins, and the
nearest default wins.
"""

from __future__ import annotations

import re
from typing import Literal

import msgspec

Period = Literal["daily", "weekly", "monthly", "total"]
Level = Literal["org", "team", "project", "user", "key"]
KeyRole = Literal["api", "team_admin"]
LEVELS: tuple[Level, ...] = ("key", "user", "project", "team", "org")

# ids name NATS subjects and KV keys: a conservative alphabet, bounded length
# checked with fullmatch: `$` would also match before a trailing newline ("ml\n" is no id: a broken subject)
ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}")
KEY_PREFIX = "gh-"


class Budget(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A spend limit over a period, calendar-aligned in the org's time zone (`total`: forever)."""

    amount_usd: float
    period: Period = "monthly"
    # hard: refused (or clamped) before dispatch when the worst case does not fit; soft: alerts only
    hard: bool = True
    # percentages of the amount at which an alert is emitted, once per period and threshold
    alerts: list[int] = msgspec.field(default_factory=lambda: [50, 80, 100])
    # when the remaining budget cannot cover the worst case: refuse (429 budget_exceeded), or lower
    # max_tokens to what it covers (refused all the same when not even a small answer fits)
    on_exceed: Literal["refuse", "clamp"] = "refuse"


class Quotas(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    rpm: int | None = None  # requests per minute
    tpm: int | None = None  # tokens per minute, input + output, counted from real usage
    max_concurrency: int | None = None  # requests in flight at once
    tool_calls_per_minute: int | None = None  # MCP tool calls (and resource reads, prompt gets) per minute


class ParamPolicy(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Request parameters: defaults filled where the client sent none, and numeric caps."""

    defaults: dict[str, float | int | str | bool] = {}
    max: dict[str, float] = {}  # e.g. {"max_tokens": 4096, "temperature": 1.0, "n": 1}
    on_exceed: Literal["clamp", "refuse"] = "clamp"


class RunLimits(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Limits of one agent run (requests and tool calls tagged with one run id); None: not limited here."""

    max_model_calls: int | None = None
    max_tool_calls: int | None = None
    max_spend_usd: float | None = None
    loop_threshold: int | None = None  # the same tool with the same arguments this many times ends the run


class Limits(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    models: list[str] = []  # allowed names, aliases or globs ("gpt-4o*"); empty: no restriction here
    policy: str = ""  # guardrail policy
    lock_policy: bool = False  # levels below cannot pick another policy
    quotas: Quotas = Quotas()
    budgets: list[Budget] = []
    params: ParamPolicy = ParamPolicy()
    tags: dict[str, str] = {}
    # may choose a routing strategy per request (x-gatehouse-route); None: as the levels above say
    route_override: bool | None = None
    # prompt and response logging (off unless a level opts in): the nearest level that says wins; the text is
    # stored after the guard's redaction in its own table, kept `log_retention_days` (default 30)
    log_content: bool | None = None
    log_retention_days: int | None = None
    # MCP tools (`<server>__<tool>` globs): every level that lists `tools` must allow a tool, and a tool any
    # level denies is denied; the same names cover prompts (`<server>__<prompt>`) and resources (`<server>__<uri>`)
    tools: list[str] = []
    tools_deny: list[str] = []
    runs: RunLimits | None = None


DEFAULT_LOG_RETENTION_DAYS = 30
MAX_LOG_RETENTION_DAYS = 3650


class Org(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    name: str = ""
    timezone: str = "UTC"  # where budget periods begin
    limits: Limits = Limits()
    created_at: float = 0.0


class Team(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    org: str = "default"
    name: str = ""
    limits: Limits = Limits()
    created_at: float = 0.0


class Project(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    team: str
    name: str = ""
    limits: Limits = Limits()
    created_at: float = 0.0


class User(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    team: str
    email: str = ""
    limits: Limits = Limits()
    created_at: float = 0.0


class VirtualKey(msgspec.Struct, frozen=True, kw_only=True):
    """A key as stored: never its secret, only the SHA-256 of it and a display prefix."""

    id: str
    team: str
    project: str = ""
    user: str = ""
    name: str = ""
    role: KeyRole = "api"
    sha256: str
    display: str = ""  # e.g. "gh-AbCd…wXyZ"
    limits: Limits = Limits()
    expires_at: float | None = None
    disabled: bool = False
    created_at: float = 0.0
    # rotation: the previous secret keeps working until `previous_until`
    previous_sha256: str = ""
    previous_until: float = 0.0


Entity = Org | Team | Project | User | VirtualKey
KINDS: dict[str, type[Entity]] = {"org": Org, "team": Team, "project": Project, "user": User, "key": VirtualKey}


def kv_key(kind: str, entity_id: str) -> str:
    """The KV key of an entity: `<kind>.<id>`."""
    return f"{kind}.{entity_id}"


def valid_id(entity_id: str) -> bool:
    return bool(ID_PATTERN.fullmatch(entity_id))


_ENCODER = msgspec.json.Encoder()
_DECODERS = {kind: msgspec.json.Decoder(cls) for kind, cls in KINDS.items()}


def encode_entity(entity: Entity) -> bytes:
    return _ENCODER.encode(entity)


def decode_entity(kind: str, data: bytes) -> Entity:
    return _DECODERS[kind].decode(data)
