"""A chDB store with a day of varied traffic (teams, projects, keys, models, providers, errors, failovers, guard
verdicts, budget alerts, logged content), for the dashboard and analyst-query tests."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from services.accounting import migrations
from services.accounting.core import (
    BUDGET_ALERTS,
    GUARD_VERDICTS,
    MCP_CALLS,
    REQUEST_CONTENT,
    REQUESTS,
    alert_row,
    content_row,
    guard_row,
    mcp_row,
    request_row,
)
from services.accounting.sink import ClickHouseSink
from shared.schemas.chat import Attempt, Caller, GuardFinding, Usage
from shared.schemas.events import BudgetAlert, ContentEvent, ContentText, GuardEvent
from shared.schemas.mcp import McpCallEvent
from tests.integration.accounting_support import make_event

TEAMS = (("ml", "search"), ("ml", "ranking"), ("support", "bot"), ("growth", "emails"))
MODELS = (
    ("gpt-4o-mini", "openai", "openai", "gpt-4o-mini"),
    ("claude", "anthropic", "anthropic", "claude-sonnet-4-5"),
    ("gemini", "gemini", "gemini", "gemini-2.5-flash"),
)


def seed(path: Path, now: float | None = None, count: int = 600) -> None:
    now = time.time() if now is None else now
    events, verdicts, content = [], [], []
    for i in range(count):
        team, project = TEAMS[i % len(TEAMS)]
        model, provider, kind, provider_model = MODELS[i % len(MODELS)]
        caller = Caller(key_id=f"key-{team}-{i % 3}", team=team, project=project, org="acme", user=f"u{i % 5}")
        failed = i % 17 == 0
        failover = i % 11 == 0
        attempts = [Attempt(provider=provider, deployment=f"{provider}/{provider_model}", status=200, latency_ms=300)]
        if failover:
            attempts.insert(
                0,
                Attempt(
                    provider="backup",
                    deployment="backup/x",
                    status=503,
                    latency_ms=40,
                    error_code="overloaded",
                    error_message="try later",
                ),
            )
        blocked = i % 23 == 0
        at = now - (i * 137) % 86_000 - 30
        events.append(
            make_event(
                f"req-{i:05d}",
                trace_id=f"trace-{i:05d}",
                caller=caller,
                requested_model=model,
                provider=provider,
                provider_kind=kind,
                deployment=f"{provider}/{provider_model}",
                provider_model=provider_model,
                status=502 if failed else (400 if blocked else 200),
                error=None,
                usage=None
                if blocked
                else Usage(input_tokens=200 + i % 900, output_tokens=50 + i % 400, cached_tokens=(i % 4) * 32),
                attempts=[] if blocked else attempts,
                guard_action="block" if blocked else ("redact" if i % 7 == 0 else "allow"),
                guard_policy="default",
                guard_findings=[GuardFinding(scanner="secrets", rule="github_token", action="block", start=3, end=40)]
                if blocked
                else [],
                received_at=at,
                finished_at=at + 0.4,
                latency_ms=350.0 + i % 250,
                ttft_ms=120.0 + i % 50,
                upstream_ms=300.0 + i % 200,
                tags={"feature": "chat" if i % 2 else "batch"},
            )
        )
        if blocked or i % 7 == 0:
            verdicts.append(
                GuardEvent(
                    event_id=f"verdict-{i}",
                    request_id=f"req-{i:05d}",
                    policy="default",
                    action="block" if blocked else "redact",
                    findings=[
                        GuardFinding(
                            scanner="secrets" if blocked else "pii",
                            rule="github_token" if blocked else "email",
                            action="block" if blocked else "redact",
                            start=3,
                            end=40,
                        )
                    ],
                    scan_us=80,
                    at=at,
                )
            )
        if i % 50 == 0:
            content.append(
                ContentEvent(
                    event_id=f"req-{i:05d}.input",
                    request_id=f"req-{i:05d}",
                    at=at,
                    caller=Caller(key_id=caller.key_id, team=team, project=project, log_content_days=30),
                    model=model,
                    direction="input",
                    policy="default",
                    guard_action="allow",
                    texts=[ContentText(location="messages[0].content", text=f"question {i} from <EMAIL_1>")],
                    redactions=1,
                    retention_days=30,
                )
            )
    # tool calls through /mcp: priced (crm) and free (files), some refused or failed (charged nothing)
    calls = []
    for i in range(count // 5):
        team, project = TEAMS[i % len(TEAMS)]
        server = "crm" if i % 2 else "files"
        status = "ok" if i % 9 else ("budget" if i % 2 else "timeout")
        at = now - (i * 433) % 86_000 - 45
        calls.append(
            McpCallEvent(
                event_id=f"call-{i:05d}",
                call_id=f"call-{i:05d}",
                method="tools/call",
                server=server,
                tool=f"{server}__{'lookup' if i % 3 else 'export'}",
                caller=Caller(key_id=f"key-{team}-{i % 3}", team=team, project=project, org="acme", user=f"u{i % 5}"),
                status=status,
                latency_ms=20.0 + i % 30,
                cost_usd=0.002 if server == "crm" and status == "ok" else 0.0,
                received_at=at,
                finished_at=at + 0.05,
            )
        )
    alerts = [
        BudgetAlert(
            event_id="alert.team.ml.m.80",
            at=now - 3600,
            scope="team.ml",
            period="monthly",
            period_key="2026-12",
            threshold_pct=80,
            amount_usd=100.0,
            spent_usd=80.5,
        )
    ]

    async def run() -> None:
        sink = ClickHouseSink(f"chdb://{path}")
        await sink.migrate(migrations.load())
        await sink.insert_new(
            {
                REQUESTS: [request_row(e, e.provider_kind) for e in events],
                GUARD_VERDICTS: [guard_row(v) for v in verdicts],
                REQUEST_CONTENT: [content_row(c) for c in content],
                BUDGET_ALERTS: [alert_row(a) for a in alerts],
                MCP_CALLS: [mcp_row(c) for c in calls],
            }
        )
        await sink.close()

    asyncio.run(run())
