"""The running stack for end-to-end tests: the real launcher (nats-server + five service processes, chDB)
in a temp dir, with provider emulators on loopback ports."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import anthropic
import openai
import pytest
from starlette.applications import Starlette

from gatehouse.launcher import Stack
from gatehouse.natsserver import free_port
from gatehouse.query import run_sql
from shared.config import hash_key
from shared.schemas.admin import SqlResult
from tests.emulators import anthropic as anthropic_emu
from tests.emulators import azure as azure_emu
from tests.emulators import bedrock as bedrock_emu
from tests.emulators import cohere as cohere_emu
from tests.emulators import faults as faults_emu
from tests.emulators import gemini as gemini_emu
from tests.emulators import mistral as mistral_emu
from tests.emulators import openai as openai_emu
from tests.servers import serve_in_thread

API_KEY = "sk-e2e-test-key"
# one function tool the emulators answer with a call (the SDK tool round trips)
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
]

# backend name → (provider kind, emulator module, provider model id, api_base suffix)
BACKENDS: dict[str, tuple[str, object, str, str]] = {
    "gemini": ("gemini", gemini_emu, "gemini-2.5-flash", ""),
    "mistral": ("mistral", mistral_emu, "mistral-small-latest", ""),
    "cohere": ("cohere", cohere_emu, "command-a-03-2025", ""),
    "anthropic": ("anthropic", anthropic_emu, "claude-sonnet-4-5", ""),
    "azure": ("azure", azure_emu, "gpt-4o", ""),
}
LIMITED_KEY = "sk-e2e-limited"
PII_KEY = "sk-e2e-pii-redact"  # policy: redact PII, restore it in the response
LEAKY_KEY = "sk-e2e-leaky"  # policy: secrets only flagged going in, blocked coming out
MAX_BODY_BYTES = 1024 * 1024  # server.max_body_bytes of this stack
CAPPED_RESPONSE_BYTES = 256 * 1024  # max_response_bytes of the emu-openai-capped provider
ROUTER_KEY = "sk-e2e-route-override"  # may choose a routing strategy per request
BEDROCK_MODEL = "anthropic.claude-3-5-sonnet-20240620-v1:0"


@dataclass
class RunningStack:
    stack: Stack
    base_url: str
    emulators: dict[str, Starlette]
    emulator_urls: dict[str, str] = field(default_factory=dict)  # name → base URL, to call one directly

    def sql(self, query: str, timeout: float = 30.0) -> SqlResult:
        assert self.stack.nats is not None
        # only the admin role may ask accounting (see shared/permissions.py)
        seed = str(self.stack.admin_seed_file)
        return asyncio.run(run_sql(self.stack.nats.url, self.stack.prefix, query, timeout, seed))

    def wait_rows(self, query: str, count: int, timeout: float = 30.0) -> SqlResult:
        """Poll until `query` returns `count` rows (events reach ClickHouse asynchronously)."""
        deadline = time.monotonic() + timeout
        while True:
            result = self.sql(query)
            assert not result.error, result.error
            if len(result.rows) >= count or time.monotonic() > deadline:
                return result
            time.sleep(0.3)


def _backend_config(urls: dict[str, str]) -> tuple[str, str]:
    """Provider and model entries for every emulated backend: `<name>-chat` and `<name>-429`."""
    providers, models = [], []
    for name, (kind, module, model, suffix) in BACKENDS.items():
        env = f"E2E_{name.upper()}_KEY"
        os.environ[env] = module.API_KEY  # type: ignore[attr-defined]
        providers.append(
            f"  emu-{name}:\n    kind: {kind}\n    api_base: {urls[name]}{suffix}\n    api_key_env: {env}\n"
        )
        models.append(f"  - name: {name}-chat\n    deployments: [{{provider: emu-{name}, model: {model}}}]\n")
        models.append(f"  - name: {name}-429\n    deployments: [{{provider: emu-{name}, model: err-429}}]\n")
    return "".join(providers), "".join(models)


def _routing_config(bedrock_url: str, faults_url: str) -> tuple[str, str]:
    """Bedrock (signed with SigV4 from the AWS_* environment) and the fault-injecting upstream's models."""
    os.environ["E2E_FAULTS_KEY"] = faults_emu.API_KEY
    providers = (
        f"  emu-bedrock:\n    kind: bedrock\n    region: {bedrock_emu.REGION}\n    api_base: {bedrock_url}\n"
        f"  faults:\n    kind: openai\n    api_base: {faults_url}/v1\n    api_key_env: E2E_FAULTS_KEY\n"
        "    passthrough: false\n"
    )
    models = f"""  - name: bedrock-chat
    deployments: [{{provider: emu-bedrock, model: "{BEDROCK_MODEL}"}}]
  - name: bedrock-429
    deployments: [{{provider: emu-bedrock, model: err-429}}]
  - name: routed
    deployments: [{{provider: faults, model: e2e-flaky}}, {{provider: faults, model: e2e-steady}}]
    fallbacks: [routed-backup]
  - name: routed-backup
    deployments: [{{provider: faults, model: e2e-backup}}]
  - name: routed-two
    deployments: [{{provider: faults, model: e2e-one}}, {{provider: faults, model: e2e-two}}]
"""
    return providers, models


def _config(openai_url: str, dead_url: str, backend_urls: dict[str, str]) -> str:
    extra_providers, extra_models = _backend_config(backend_urls)
    routing_providers, routing_models = _routing_config(backend_urls["bedrock"], backend_urls["faults"])
    extra_providers += routing_providers
    extra_models += routing_models
    return f"""
server:
  host: 127.0.0.1
  port: 0
  max_body_bytes: {MAX_BODY_BYTES}
  request_timeout_s: 30
keys:
  - id: e2e
    sha256: {hash_key(API_KEY)}
    team: qa
    project: gatehouse-tests
  - id: limited
    sha256: {hash_key(LIMITED_KEY)}
    models: [mock-1]
  - id: pii
    sha256: {hash_key(PII_KEY)}
    policy: pii-redact
  - id: leaky
    sha256: {hash_key(LEAKY_KEY)}
    policy: secrets-out
  - id: router
    sha256: {hash_key(ROUTER_KEY)}
    route_override: true
guardrails:
  policies:
    pii-redact:
      restore_response: true
      output_policy: none-out
      secrets: {{action: block}}
      pii: {{action: redact, entities: [email, credit_card]}}
    none-out: {{}}
    secrets-out:
      secrets: {{action: flag}}
      output_policy: block-secrets
    block-secrets:
      secrets: {{action: block}}
providers:
  mock:
    kind: mock
  emu-openai:
    kind: openai
    api_base: {openai_url}/v1
    api_key_env: E2E_EMU_OPENAI_KEY
  dead:
    kind: openai
    api_base: {dead_url}/v1
    api_key_env: E2E_EMU_OPENAI_KEY
    connect_timeout_s: 1
  rejected:
    kind: openai
    api_base: {openai_url}/v1
    api_key_env: E2E_REJECTED_KEY
  emu-openai-capped:
    kind: openai
    api_base: {openai_url}/v1
    api_key_env: E2E_EMU_OPENAI_KEY
    max_response_bytes: {CAPPED_RESPONSE_BYTES}
    max_sse_event_bytes: 65536
{extra_providers}models:
  - name: mock-1
    deployments: [{{provider: mock, model: mock-1}}]
  - name: mock-embed
    kind: embeddings
    deployments: [{{provider: mock, model: mock-embed}}]
  - name: gpt-emu
    deployments: [{{provider: emu-openai, model: gpt-emu}}]
  - name: emu-embed
    kind: embeddings
    deployments: [{{provider: emu-openai, model: text-embedding-emu}}]
  - name: emu-429
    deployments: [{{provider: emu-openai, model: err-429}}]
  - name: emu-500
    deployments: [{{provider: emu-openai, model: err-500}}]
  - name: emu-priced
    deployments: [{{provider: emu-openai, model: gpt-emu, price: {{input_per_mtok: 0, output_per_mtok: 1000000}}}}]
  - name: emu-drip
    deployments: [{{provider: emu-openai, model: drip-100}}]
  - name: emu-slow
    deployments: [{{provider: emu-openai, model: slow-3000, timeout_s: 1}}]
  - name: down
    deployments: [{{provider: dead, model: gpt-emu}}]
  - name: big-under
    deployments: [{{provider: emu-openai-capped, model: big-{CAPPED_RESPONSE_BYTES // 2}}}]
  - name: big-over
    deployments: [{{provider: emu-openai-capped, model: big-{CAPPED_RESPONSE_BYTES + 1}}}]
  - name: rejected-key
    deployments: [{{provider: rejected, model: gpt-emu}}]
  - name: failover
    deployments:
      - {{provider: rejected, model: gpt-emu}}
      - {{provider: emu-openai, model: err-503}}
      - {{provider: emu-openai, model: gpt-emu}}
  - name: claude-native
    deployments: [{{provider: emu-anthropic, model: claude-sonnet-4-5}}]
  - name: gpt-native
    deployments: [{{provider: emu-openai, model: gpt-emu}}]
  - name: claude-or-gpt
    deployments:
      - {{provider: emu-anthropic, model: err-529}}
      - {{provider: emu-openai, model: gpt-emu}}
{extra_models}"""


@pytest.fixture(scope="session")
def running_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    tmp: Path = tmp_path_factory.mktemp("stack")
    emulators: dict[str, Starlette] = {"openai": openai_emu.create_app()}
    emulators.update({name: spec[1].create_app() for name, spec in BACKENDS.items()})  # type: ignore[attr-defined]
    emulators["bedrock"] = bedrock_emu.create_app()
    emulators["faults"] = faults_emu.create_app()
    # the router finds its AWS credentials through botocore's standard chain: here, the environment
    os.environ.update(
        {
            "AWS_ACCESS_KEY_ID": bedrock_emu.ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": bedrock_emu.SECRET_KEY,
            "AWS_SESSION_TOKEN": bedrock_emu.SESSION_TOKEN,
        }
    )
    dead_port = free_port()  # nothing listens here
    os.environ["E2E_EMU_OPENAI_KEY"] = openai_emu.API_KEY
    os.environ["E2E_REJECTED_KEY"] = "sk-the-emulator-rejects-this"  # a 401 upstream: failover, not the client's 401
    with contextlib.ExitStack() as servers:
        urls = {name: servers.enter_context(serve_in_thread(app)) for name, app in emulators.items()}
        config = tmp / "gatehouse.yaml"
        config.write_text(_config(urls["openai"], f"http://127.0.0.1:{dead_port}", urls))
        stack = Stack(
            config=config,
            data_dir=tmp / "data",
            host="127.0.0.1",
            port=free_port(),
            prefix="e2e",
            nats_port=free_port(),
        )
        stack.start()
        try:
            if not stack.wait_ready(90):
                logs = "\n".join(
                    f"--- {p.name}\n{p.read_text()[-3000:]}" for p in (tmp / "data" / "logs").glob("*.log")
                )
                pytest.fail(f"stack did not become ready:\n{logs}")
            yield RunningStack(stack, f"{stack.ingress_url}/v1", emulators, urls)
        finally:
            stack.stop()


# SDK clients on the running stack, shared by a module (no retries: a test sees the first answer)
@pytest.fixture(scope="module")
def oai(running_stack: RunningStack) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=running_stack.base_url, api_key=API_KEY, max_retries=0, timeout=20) as c:
        yield c


@pytest.fixture(scope="module")
def claude(running_stack: RunningStack) -> Iterator[anthropic.Anthropic]:
    base = running_stack.base_url.removesuffix("/v1")
    with anthropic.Anthropic(base_url=base, api_key=API_KEY, max_retries=0, timeout=20) as c:
        yield c
