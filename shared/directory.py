"""The in-memory copy of orgs, teams, projects, users and virtual keys that authentication reads (pure).

Every ingress replica keeps one, fed by a KV watch (shared/keystore.py) and by the static keys
of the config file; the hot path looks a key up here and never waits on the bus. A key resolves to an
`Entitlement`: the key and the levels above it, each with its limits.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

from shared.config import KeyConfig
from shared.governance import (
    DEFAULT_LOG_RETENTION_DAYS,
    KINDS,
    MAX_LOG_RETENTION_DAYS,
    Entity,
    Level,
    Limits,
    Org,
    ParamPolicy,
    Project,
    Quotas,
    RunLimits,
    Team,
    User,
    VirtualKey,
)
from shared.schemas.chat import Caller

DEFAULT_ORG = "default"


@dataclass(frozen=True, slots=True)
class Scope:
    """One level a request is accounted to: its quotas and budgets are counted under `<level>.<id>`."""

    level: Level
    id: str
    limits: Limits

    @property
    def name(self) -> str:
        return f"{self.level}.{self.id}"


@dataclass(frozen=True, slots=True)
class Entitlement:
    """What one key may do: the key itself, then user, project, team and org (those that exist)."""

    key: VirtualKey
    caller: Caller
    scopes: tuple[Scope, ...]
    timezone: str = "UTC"

    def allows(self, model: str, canonical: str) -> bool:
        """Every level that lists models must allow the name (or its canonical name)."""
        for scope in self.scopes:
            patterns = scope.limits.models
            if patterns and not any(_matches(p, model) or _matches(p, canonical) for p in patterns):
                return False
        return True

    def allows_tool(self, name: str) -> bool:
        """An MCP tool (prompt, resource) by its namespaced name: every level that lists tools allows it,
        and no level denies it."""
        for scope in self.scopes:
            limits = scope.limits
            if any(_matches(p, name) for p in limits.tools_deny):
                return False
            if limits.tools and not any(_matches(p, name) for p in limits.tools):
                return False
        return True

    def run_limits(self, defaults: RunLimits) -> RunLimits:
        """The limits of this key's agent runs: the config's, tightened by every level that sets its own."""
        values = {f: getattr(defaults, f) for f in RunLimits.__struct_fields__}
        for scope in self.scopes:
            own = scope.limits.runs
            if own is None:
                continue
            for f in RunLimits.__struct_fields__:
                mine = getattr(own, f)
                if mine is not None:
                    values[f] = mine if values[f] is None else min(values[f], mine)
        return RunLimits(**values)

    @property
    def policy(self) -> str:
        """The guardrail policy: the highest level that locks its policy wins, else the nearest one set."""
        for scope in reversed(self.scopes):
            if scope.limits.lock_policy and scope.limits.policy:
                return scope.limits.policy
        return next((s.limits.policy for s in self.scopes if s.limits.policy), "")

    @property
    def params(self) -> ParamPolicy:
        """Defaults from the nearest level that sets each; caps the lowest of all levels; refuse wins."""
        defaults: dict[str, float | int | str | bool] = {}
        caps: dict[str, float] = {}
        refuse = False
        for scope in reversed(self.scopes):  # org first, so nearer levels overwrite defaults
            p = scope.limits.params
            defaults.update(p.defaults)
            for name, cap in p.max.items():
                caps[name] = min(cap, caps.get(name, cap))
            refuse = refuse or (bool(p.max) and p.on_exceed == "refuse")
        return ParamPolicy(defaults=defaults, max=caps, on_exceed="refuse" if refuse else "clamp")

    @property
    def tags(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for scope in reversed(self.scopes):
            out.update(scope.limits.tags)
        return out

    @property
    def route_override(self) -> bool:
        """The key may choose a routing strategy: some level allows it and none forbids it."""
        said = [s.limits.route_override for s in self.scopes if s.limits.route_override is not None]
        return bool(said) and all(said)

    @property
    def log_content_days(self) -> int:
        """Days to keep this key's prompts and responses (redacted) in the content log; 0: not logged.
        The nearest level that sets `log_content` decides, and the nearest `log_retention_days` applies."""
        on = next((s.limits.log_content for s in self.scopes if s.limits.log_content is not None), False)
        if not on:
            return 0
        days = next((s.limits.log_retention_days for s in self.scopes if s.limits.log_retention_days), None)
        return min(max(days or DEFAULT_LOG_RETENTION_DAYS, 1), MAX_LOG_RETENTION_DAYS)

    @property
    def governed(self) -> bool:
        """Whether any level has quotas or budgets (a plain key skips the counters entirely)."""
        return any(
            s.limits.budgets
            or s.limits.quotas.rpm is not None
            or s.limits.quotas.tpm is not None
            or s.limits.quotas.max_concurrency is not None
            for s in self.scopes
        )


def _matches(pattern: str, name: str) -> bool:
    return pattern == name or (any(c in pattern for c in "*?[") and fnmatch.fnmatchcase(name, pattern))


@dataclass
class Directory:
    orgs: dict[str, Org] = field(default_factory=dict)
    teams: dict[str, Team] = field(default_factory=dict)
    projects: dict[str, Project] = field(default_factory=dict)
    users: dict[str, User] = field(default_factory=dict)
    keys: dict[str, VirtualKey] = field(default_factory=dict)
    static: dict[str, VirtualKey] = field(default_factory=dict)  # from the config file; not in KV
    _by_hash: dict[str, str] = field(default_factory=dict)
    _previous: dict[str, str] = field(default_factory=dict)
    _cache: dict[str, Entitlement] = field(default_factory=dict)
    revision: int = 0

    @classmethod
    def with_static(cls, keys: dict[str, KeyConfig]) -> Directory:
        """A directory holding the config file's keys (sha256 → config, as `GatehouseConfig.key_hashes`)."""
        d = cls()
        for digest, k in keys.items():
            runs = RunLimits(**k.runs.model_dump()) if k.runs is not None else None
            limits = Limits(
                models=list(k.models),
                policy=k.policy,
                route_override=k.route_override or None,
                tools=list(k.tools),
                tools_deny=list(k.tools_deny),
                quotas=Quotas(tool_calls_per_minute=k.tool_calls_per_minute),
                runs=runs,
            )
            d.static[k.id] = VirtualKey(
                id=k.id, team=k.team, project=k.project, user=k.user, sha256=digest, limits=limits
            )
        d._reindex()
        return d

    # ---- updates (from the KV watch) ----------------------------------------------------------
    def put(self, entity: Entity) -> None:
        self._table(entity)[entity.id] = entity
        self._changed()

    def delete(self, kind: str, entity_id: str) -> None:
        self._tables()[kind].pop(entity_id, None)
        self._changed()

    def _tables(self) -> dict[str, dict[str, Entity]]:
        return {
            "org": self.orgs,  # type: ignore[dict-item]
            "team": self.teams,  # type: ignore[dict-item]
            "project": self.projects,  # type: ignore[dict-item]
            "user": self.users,  # type: ignore[dict-item]
            "key": self.keys,  # type: ignore[dict-item]
        }

    def _table(self, entity: Entity) -> dict[str, Entity]:
        kind = next(k for k, cls in KINDS.items() if isinstance(entity, cls))
        return self._tables()[kind]

    def _changed(self) -> None:
        self.revision += 1
        self._reindex()

    def _reindex(self) -> None:
        self._by_hash = {k.sha256: k.id for k in self.static.values()}
        self._previous = {}
        for k in self.keys.values():
            self._by_hash[k.sha256] = k.id
            if k.previous_sha256:
                self._previous[k.previous_sha256] = k.id
        self._cache = {}

    # ---- lookups (the hot path) ---------------------------------------------------------------
    def key_for(self, digest: str, now: float) -> VirtualKey | None:
        """The usable key with this secret hash: enabled, not expired (a rotated-out secret only in its grace)."""
        key_id = self._by_hash.get(digest)
        if key_id is not None:
            key = self.keys.get(key_id) or self.static.get(key_id)
        else:
            key_id = self._previous.get(digest)
            key = self.keys.get(key_id) if key_id else None
            if key is not None and now >= key.previous_until:
                return None
        if key is None or key.disabled or (key.expires_at is not None and now >= key.expires_at):
            return None
        return key

    def entitlement(self, key: VirtualKey) -> Entitlement:
        cached = self._cache.get(key.id)
        if cached is not None and cached.key is key:
            return cached
        scopes = [Scope("key", key.id, key.limits)]
        user = self.users.get(key.user) if key.user else None
        if user is not None:
            scopes.append(Scope("user", user.id, user.limits))
        project = self.projects.get(key.project) if key.project else None
        if project is not None:
            scopes.append(Scope("project", project.id, project.limits))
        team = self.teams.get(key.team) if key.team else None
        if team is not None:
            scopes.append(Scope("team", team.id, team.limits))
        org_id = team.org if team is not None else DEFAULT_ORG
        org = self.orgs.get(org_id)
        if org is not None:
            scopes.append(Scope("org", org.id, org.limits))
        ent = Entitlement(
            key=key,
            caller=Caller(key_id=key.id, team=key.team, project=key.project, user=key.user, org=org_id),
            scopes=tuple(scopes),
            timezone=org.timezone if org is not None else "UTC",
        )
        ent = _with_policy(ent)
        self._cache[key.id] = ent
        return ent


def _with_policy(ent: Entitlement) -> Entitlement:
    """The caller with what the levels decide for every request: the guardrail policy and content logging."""
    caller = ent.caller
    policy = ent.policy
    days = ent.log_content_days
    if policy != caller.policy or days != caller.log_content_days:
        caller = Caller(
            key_id=caller.key_id,
            team=caller.team,
            project=caller.project,
            user=caller.user,
            org=caller.org,
            policy=policy,
            log_content_days=days,
        )
    return Entitlement(key=ent.key, caller=caller, scopes=ent.scopes, timezone=ent.timezone)
