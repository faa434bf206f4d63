"""A running stack for the MCP tests: the real launcher (nats-server, every service, chDB) with two upstream MCP
servers written with the official `mcp` SDK (tests/mcp_servers/notes.py): `local`, a stdio child the mcp stage
launches and supervises, and `remote`, a Streamable HTTP server in its own process. Clients are the SDK's."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import nats
import nats.js.errors
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from gatehouse.launcher import Stack
from gatehouse.natsserver import free_port
from gatehouse.query import run_sql
from shared.config import hash_key
from shared.schemas.admin import SqlResult
from shared.subjects import Subjects
from tests.emulators import openai as openai_emu

NOTES = Path(__file__).resolve().parents[1] / "mcp_servers" / "notes.py"
MAIN_KEY = "sk-e2e-mcp-main"  # policy mcp-flag: secrets in results redacted, injections flagged
STRICT_KEY = "sk-e2e-mcp-strict"  # policy mcp-strict: injections in results blocked
QUOTA_KEY = "sk-e2e-mcp-quota"  # 3 tool calls per minute
RUN_KEY = "sk-e2e-mcp-runs"  # agent runs: 4 tool calls, 2 model calls, a loop at 3 identical calls
# policy mcp-args: secrets and card numbers in arguments redacted, weapons talk blocked; results pass unscanned (so
# a tool's answer shows exactly the arguments it was given)
APPROVE_KEY = "sk-e2e-mcp-approve"
APPROVAL_TIMEOUT_S = 4


def _openai_config(openai_url: str | None) -> tuple[str, str]:
    """The OpenAI emulator (tests/emulators/openai.py) as two providers, when given: `gpt-emu` takes the
    Responses body as it is, `gpt-emu-chat` its chat translation, `gpt-emu-slow` too, each turn taking 3 s."""
    if openai_url is None:
        return "", ""
    os.environ["E2E_MCP_OPENAI_KEY"] = openai_emu.API_KEY
    base = f"kind: openai, api_base: {openai_url}/v1, api_key_env: E2E_MCP_OPENAI_KEY"
    providers = f"  emu-openai: {{{base}}}\n  emu-chat: {{{base}, passthrough: false}}\n"
    models = (
        "  - name: gpt-emu\n    deployments: [{provider: emu-openai, model: gpt-emu}]\n"
        "  - name: gpt-emu-chat\n    deployments: [{provider: emu-chat, model: gpt-emu}]\n"
        "  - name: gpt-emu-slow\n    deployments: [{provider: emu-chat, model: slow-3000}]\n"
    )
    return providers, models


def config_text(remote_url: str, legacy_url: str, legacy_token_url: str, openai_url: str | None = None) -> str:
    python = sys.executable
    openai_providers, openai_models = _openai_config(openai_url)
    return f"""
server: {{host: 127.0.0.1, port: 0, request_timeout_s: 30}}
keys:
  - {{id: mcp-main, sha256: {hash_key(MAIN_KEY)}, team: qa, project: agents, policy: mcp-flag,
      tools_deny: ["local__write_file"]}}
  - {{id: mcp-strict, sha256: {hash_key(STRICT_KEY)}, team: qa, policy: mcp-strict,
      tools: ["remote__*", "local__echo"]}}
  - {{id: mcp-quota, sha256: {hash_key(QUOTA_KEY)}, tool_calls_per_minute: 3}}
  - {{id: mcp-runs, sha256: {hash_key(RUN_KEY)}, runs: {{max_tool_calls: 4, max_model_calls: 2, loop_threshold: 3}}}}
  - {{id: mcp-approve, sha256: {hash_key(APPROVE_KEY)}, team: qa, policy: mcp-args}}
providers:
  mock: {{kind: mock}}
{openai_providers}models:
  - name: mock-1
    deployments: [{{provider: mock, model: mock-1}}]
{openai_models}guardrails:
  policies:
    mcp-flag:
      output_policy: tool-out-flag
    tool-out-flag:
      secrets: {{action: redact}}
      injection: {{action: flag}}
    mcp-strict:
      output_policy: tool-out-block
    tool-out-block:
      secrets: {{action: redact}}
      injection: {{action: block}}
    mcp-args:
      output_policy: results-open
      secrets: {{action: redact}}
      pii: {{action: redact, entities: [credit_card]}}
      topics: [{{name: weapons, keywords: [rifle, ammunition], min_hits: 2, action: block}}]
    results-open: {{description: results pass unscanned}}
accounting:
  flush_interval_s: 0.2
mcp:
  call_timeout_s: 10
  approval_timeout_s: {APPROVAL_TIMEOUT_S}
  servers:
    local:
      transport: stdio
      command: ["{python}", "{NOTES}", "stdio", "local"]
      health_interval_s: 1
      restart_backoff_s: 0.2
    remote:
      transport: http
      url: {remote_url}
      timeout_s: 2
      price_usd: 0.01
      headers_from_env: {{x-upstream-key: E2E_MCP_REMOTE_KEY}}
    legacy:
      transport: sse
      url: {legacy_url}
      oauth: {{token_url: "{legacy_token_url}", client_id: gatehouse, client_secret_env: E2E_MCP_LEGACY_SECRET}}
  rules:
    - {{tools: ["*__transfer"], arg: amount, max: 100, action: deny, message: "transfers above 100 need a human"}}
    - {{tools: ["*__write_file"], arg: path, not_prefix: /srv/shared/, action: deny}}
    - {{tools: ["*__send_email"], arg: to, domain_not_in: [example.com], action: approve}}
"""


@dataclass
class McpStack:
    stack: Stack
    remote_url: str

    @property
    def url(self) -> str:
        return f"{self.stack.ingress_url}/mcp"

    @contextlib.asynccontextmanager
    async def client(
        self, key: str = MAIN_KEY, headers: dict[str, str] | None = None, replica: int = 0, **kw: object
    ) -> AsyncIterator[Client]:
        """An official SDK client session with gatehouse (ingress `replica`), authenticated with `key`."""
        url = f"{self.stack.ingress_urls[replica]}/mcp"
        http = create_mcp_http_client(headers={"authorization": f"Bearer {key}", **(headers or {})})
        async with http, Client(streamable_http_client(url, http_client=http), **kw) as client:  # type: ignore[arg-type]
            yield client

    async def sql(self, query: str) -> SqlResult:
        assert self.stack.nats is not None
        return await run_sql(self.stack.nats.url, self.stack.prefix, query, 30, str(self.stack.admin_seed_file))

    async def counter(self, subject: str) -> int | None:
        """A counter's value read by the admin identity (a direct get of its last message); None: no such counter."""
        assert self.stack.nats is not None
        subjects = Subjects(self.stack.prefix)
        stream = subjects.counters_stream
        nc = await nats.connect(
            self.stack.nats.url,
            nkeys_seed=str(self.stack.admin_seed_file),
            inbox_prefix=subjects.role_inbox("admin").encode(),
        )
        try:
            try:
                msg = await nc.jetstream().get_last_msg(stream, subject)
            except nats.js.errors.NotFoundError:
                return None
            return int(json.loads(msg.data)["val"])
        finally:
            await nc.close()

    async def approval_entries(self) -> list[bytes]:
        """Every entry of the approvals KV bucket as stored (read directly, by the admin identity)."""
        assert self.stack.nats is not None
        subjects = Subjects(self.stack.prefix)
        nc = await nats.connect(
            self.stack.nats.url,
            nkeys_seed=str(self.stack.admin_seed_file),
            inbox_prefix=subjects.role_inbox("admin").encode(),
        )
        try:
            kv = await nc.jetstream().key_value(subjects.mcp_approvals_bucket)
            try:
                keys = await kv.keys()
            except nats.js.errors.NoKeysError:
                return []
            return [(await kv.get(key)).value or b"" for key in keys]
        finally:
            await nc.close()

    def admin(
        self, method: str, path: str, body: object = None, params: dict[str, str] | None = None
    ) -> httpx.Response:
        key = self.stack.admin_key_file.read_text().strip()
        return httpx.request(
            method,
            f"{self.stack.ingress_url}/admin/v1{path}",
            json=body,
            params=params,
            headers={"authorization": f"Bearer {key}"},
            timeout=30,
        )


def _two_free_ports() -> int:
    """A free port whose next one is free too (ingress replica i listens on port + i)."""
    while True:
        port = free_port()
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port


def _wait_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on port {port}")


# what the upstream servers demand, held by the gateway's mcp stage only (never by ingress or a client)
REMOTE_KEY = "upstream-remote-key-123"
LEGACY_SECRET = "upstream-legacy-oauth-secret"


@contextlib.contextmanager
def upstream_server(transport: str, name: str, port: int, env: dict[str, str]) -> Iterator[str]:
    """An HTTP upstream (Streamable HTTP or legacy SSE) in its own process, demanding its credential."""
    proc = subprocess.Popen(
        [sys.executable, str(NOTES), transport, name, str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, **env},
    )
    try:
        _wait_port(port)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@contextlib.contextmanager
def mcp_stack(tmp: Path, prefix: str, openai_url: str | None = None) -> Iterator[McpStack]:
    os.environ["E2E_MCP_REMOTE_KEY"] = REMOTE_KEY
    os.environ["E2E_MCP_LEGACY_SECRET"] = LEGACY_SECRET
    with (
        upstream_server("http", "remote", free_port(), {"NOTES_REQUIRED_KEY": REMOTE_KEY}) as remote_base,
        upstream_server("sse", "legacy", free_port(), {"NOTES_OAUTH_SECRET": LEGACY_SECRET}) as legacy_base,
    ):
        remote = f"{remote_base}/mcp"
        config = tmp / "gatehouse.yaml"
        config.write_text(config_text(remote, f"{legacy_base}/sse", f"{legacy_base}/token", openai_url))
        stack = Stack(
            config=config,
            data_dir=tmp / "data",
            host="127.0.0.1",
            port=_two_free_ports(),
            replicas={"ingress": 2},  # run limits and quotas must hold across replicas
            prefix=prefix,
            nats_port=free_port(),
        )
        try:
            stack.start()
            if not stack.wait_ready(90):
                logs = "\n".join(
                    f"--- {p.name}\n{p.read_text()[-3000:]}" for p in (tmp / "data" / "logs").glob("*.log")
                )
                raise AssertionError(f"stack did not become ready:\n{logs}")
            yield McpStack(stack, remote)
        finally:
            stack.stop()


def logs(tmp: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text()[-4000:]}" for p in (tmp / "data" / "logs").glob("*.log"))
