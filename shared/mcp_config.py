"""MCP gateway configuration (the `mcp:` section of the config file).

Shape (every key optional; unknown keys are rejected with file and line)::

    mcp:
      call_timeout_s: 30             # one upstream call at most (a server may set its own)
      approval_timeout_s: 300        # how long a call that needs approval waits for an admin
      max_pending_approvals_per_key: 8   # calls of one key waiting for an approval (per ingress replica)
      input_policy: ""               # guardrail policy for arguments ("": the key's, else the default)
      output_policy: tool-output     # guardrail policy for results ("": the input policy's output policy,
                                     # else the input policy itself: tool output is untrusted text)
      list_page_size: 100            # items a page of the gateway's own tools/resources/prompts lists
      responses_max_tool_calls: 64   # tool calls one Responses API response with `mcp` tools makes at most
                                     # (a request's `max_tool_calls` may lower it, not raise it)
      servers:
        files:                       # tools appear as files__<tool>
          transport: stdio           # stdio | http (Streamable HTTP) | sse (legacy HTTP+SSE)
          command: [python, -m, my_mcp_server]
          env_from: {API_TOKEN: FILES_TOKEN}    # child env var ← gateway env var
          max_list_pages: 100        # pages of one upstream list read (nextCursor) at most
          max_list_items: 10000      # items of one upstream list at most
          max_list_bytes: 8388608    # bytes of one upstream list's JSON at most (past any bound: the server is down)
          price_usd: 0.001           # per call, into the key's budgets and the ledger
          tool_prices: {search: 0.01}
        crm:
          transport: http
          url: https://crm.internal/mcp
          headers_from_env: {X-Api-Key: CRM_KEY}           # header ← env var (never sent to clients)
          oauth: {token_url: https://auth/token, client_id: gatehouse, client_secret_env: CRM_SECRET}
      rules:                         # argument rules, first match wins; see McpRule
        - {tools: ["files__write*"], arg: path, not_prefix: /srv/shared/, action: deny}
        - {tools: ["crm__send_email"], arg: to, domain_not_in: [example.com], action: approve}
        - {tools: ["pay__transfer"], arg: amount, max: 100, action: deny, message: "over the limit"}
      runs:                          # agent runs (x-gatehouse-run-id); keys may set tighter ones
        max_model_calls: 200
        max_tool_calls: 500
        max_spend_usd: 5
        loop_threshold: 5            # the same tool with the same arguments this many times ends the run
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

SERVER_NAME = r"[a-z0-9][a-z0-9-]{0,31}"  # no "__": the namespace separator stays unambiguous
SEPARATOR = "__"
DEFAULT_PAGE_SIZE = 100


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class OAuthClientCredentials(_Strict):
    """The OAuth 2 client-credentials grant: the gateway fetches (and refreshes) an access token itself."""

    token_url: str
    client_id: str
    client_secret_env: str
    scope: str = ""
    audience: str = ""


class McpServerConfig(_Strict):
    """One upstream MCP server: where it is, how to reach it, and the credentials the gateway holds for it."""

    transport: Literal["stdio", "http", "sse"]
    url: str | None = None
    command: list[str] = Field(default_factory=list)
    cwd: str | None = None
    # stdio: the child's environment variables, each read from the gateway's environment
    env_from: dict[str, str] = Field(default_factory=dict)
    # http/sse: static request headers, each value read from an environment variable
    headers_from_env: dict[str, str] = Field(default_factory=dict)
    oauth: OAuthClientCredentials | None = None
    timeout_s: float | None = Field(default=None, gt=0)
    connect_timeout_s: float = Field(default=10.0, gt=0)
    # calls in flight to this server at once (per mcp replica); up to `max_queued` more wait for a slot, each at
    # most `queue_wait_s`; past either, a call is refused at once as busy, so that a slow server cannot hold the
    # stage's workers and delay calls to every other server
    max_concurrency: int = Field(default=32, gt=0, le=10_000)
    max_queued: int = Field(default=32, ge=0, le=10_000)
    queue_wait_s: float = Field(default=1.0, gt=0, le=300)
    # how often a live connection is checked (a ping), and the restart backoff when it breaks
    health_interval_s: float = Field(default=5.0, gt=0)
    restart_backoff_s: float = Field(default=0.5, gt=0)
    restart_backoff_max_s: float = Field(default=30.0, gt=0)
    # the server's lists (tools, resources, resource templates, prompts) are read page by page (`nextCursor`) up to
    # these bounds; a list past any (or a server repeating a cursor) is an error of the server, not cut short. The
    # bytes bound what the mcp stage holds and what every ingress replica reads and decodes (several times the JSON
    # in memory) of a list the upstream alone decides: its output is untrusted
    max_list_pages: int = Field(default=100, gt=0, le=10_000)
    max_list_items: int = Field(default=10_000, gt=0, le=1_000_000)
    max_list_bytes: int = Field(default=8 * 1024 * 1024, gt=0, le=1024 * 1024 * 1024)
    price_usd: float = Field(default=0.0, ge=0)
    tool_prices: dict[str, float] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _where(self) -> McpServerConfig:
        if self.transport == "stdio":
            if not self.command:
                raise ValueError("a stdio server needs `command` (the program and its arguments)")
            if self.url or self.headers_from_env or self.oauth:
                raise ValueError("a stdio server takes no `url`, `headers_from_env` or `oauth`")
        else:
            if not self.url or not self.url.startswith(("http://", "https://")):
                raise ValueError(f"a {self.transport} server needs an http(s) `url`")
            if self.command or self.env_from:
                raise ValueError(f"a {self.transport} server takes no `command` or `env_from`")
        if any(p < 0 for p in self.tool_prices.values()):
            raise ValueError("tool_prices cannot be negative")
        return self

    def price(self, tool: str) -> float:
        return self.tool_prices.get(tool, self.price_usd)


RuleAction = Literal["allow", "deny", "approve"]


class McpRule(_Strict):
    """One argument rule: when the call's tool matches `tools` (globs on namespaced names) and the condition
    on argument `arg` (a dotted path into the arguments) holds, `action` applies. Conditions (one or more,
    all must hold): prefix / not_prefix (strings; paths are normalised first), domain_in / domain_not_in
    (the domain of an e-mail address or URL, or every address of a list), max / min (finite numbers), equals,
    one_of, matches (RE2, whole string). A rule without a condition matches every call of its tools. A deny or
    approve rule holds when any item of a list meets its condition and when a value cannot be read or is
    missing (unless `missing: skip`); an allow rule only when every item meets it (see docs/mcp.md)."""

    tools: list[str] = Field(min_length=1)
    arg: str = ""
    prefix: str | None = None
    not_prefix: str | None = None
    domain_in: list[str] | None = None
    domain_not_in: list[str] | None = None
    max: float | None = None
    min: float | None = None
    equals: str | float | bool | None = None
    one_of: list[str] | None = None
    matches: str | None = None
    # absent/null argument: None (default) matches for deny/approve rules, not for allow rules
    missing: Literal["match", "skip"] | None = None
    action: RuleAction
    message: str = ""

    @model_validator(mode="after")
    def _condition_needs_arg(self) -> McpRule:
        conditions = (
            self.prefix, self.not_prefix, self.domain_in, self.domain_not_in, self.max, self.min, self.equals,
            self.one_of, self.matches,
        )  # fmt: skip
        if any(c is not None for c in conditions) and not self.arg:
            raise ValueError("a rule with a condition needs `arg` (the argument it looks at)")
        if self.matches is not None:
            import re2

            try:
                re2.compile(self.matches)
            except re2.error as exc:
                raise ValueError(f"matches: not a valid RE2 pattern: {exc}") from exc
        return self


class RunLimits(_Strict):
    """Limits of one agent run (calls tagged with the same run id, per key); None: no limit."""

    max_model_calls: int | None = Field(default=None, gt=0)
    max_tool_calls: int | None = Field(default=None, gt=0)
    max_spend_usd: float | None = Field(default=None, gt=0)
    loop_threshold: int | None = Field(default=None, ge=2)


class McpConfig(_Strict):
    servers: dict[str, McpServerConfig] = Field(default_factory=dict)
    call_timeout_s: float = Field(default=30.0, gt=0)
    approval_timeout_s: float = Field(default=300.0, gt=0)
    # calls of one key waiting for an approval at once, per ingress replica (more are refused, -32012)
    max_pending_approvals_per_key: int = Field(default=8, gt=0, le=10_000)
    input_policy: str = ""
    output_policy: str = ""
    rules: list[McpRule] = Field(default_factory=list)
    runs: RunLimits = Field(default_factory=RunLimits)
    # an agent run's counters (calls, spend, loops) are forgotten this long after the run's last call
    run_ttl_s: float = Field(default=86_400.0, gt=0)
    # how long an idle client session is kept, and how many one ingress replica holds
    session_idle_s: float = Field(default=3600.0, gt=0)
    max_sessions: int = Field(default=10_000, gt=0)
    # items a page of the gateway's own lists (tools/list, …) holds; clients follow `nextCursor` for the rest
    list_page_size: int = Field(default=DEFAULT_PAGE_SIZE, gt=0, le=10_000)
    # tool calls (so model turns, one more) one Responses API response with `mcp` tools makes at most, whatever
    # its `max_tool_calls`: each turn replays the whole conversation through the guard and the router
    responses_max_tool_calls: int = Field(default=64, gt=0, le=10_000)

    @model_validator(mode="after")
    def _names(self) -> McpConfig:
        for name in self.servers:
            if not re.fullmatch(SERVER_NAME, name) or SEPARATOR in name:
                raise ValueError(
                    f"servers: {name!r} is not a valid server name (lowercase letters, digits and single '-')"
                )
        return self

    def timeout_for(self, server: str) -> float:
        own = self.servers[server].timeout_s if server in self.servers else None
        return own if own is not None else self.call_timeout_s


def namespaced(server: str, name: str) -> str:
    """`<server>__<name>`: what clients see, so two servers' names never collide."""
    return f"{server}{SEPARATOR}{name}"


def split_name(name: str) -> tuple[str, str] | None:
    """(server, upstream name) of a namespaced name, None when it has no server part."""
    server, sep, rest = name.partition(SEPARATOR)
    return (server, rest) if sep and server and rest else None
