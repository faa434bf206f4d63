"""A webhook body in the shape Slack-compatible incoming webhooks accept: `{"text": …, "blocks": [...]}`
(Slack, Mattermost, Rocket.Chat, Discord's `/slack` endpoint). `text` is the notification's fallback;
`blocks` holds a header, a summary and the facts as fields.

    webhooks:
      - name: slack-budgets
        url_env: SLACK_WEBHOOK_URL
        events: [budget_alert]            # deployment_down and request_blocked are rendered too
        format: gatehouse.plugins.slack_alerts:format_event
"""

from __future__ import annotations

from collections.abc import Mapping

_TITLES = {
    "budget_alert": ":money_with_wings: Budget alert",
    "request_blocked": ":no_entry: Request blocked by the guard",
    "deployment_down": ":rotating_light: Deployment down",
}


def _text(kind: str, data: Mapping[str, object]) -> tuple[str, list[tuple[str, str]]]:
    """(the summary line, the facts) of one event."""
    if kind == "budget_alert":
        scope, pct = str(data.get("scope", "")), data.get("threshold_pct", 0)
        spent, amount = _num(data.get("spent_usd")), _num(data.get("amount_usd"))
        period = str(data.get("period", ""))
        text = (
            f"gatehouse budget alert: {scope} has spent ${spent:,.2f} of its {period} budget "
            f"of ${amount:,.2f} ({pct}%)."
        )
        facts = [
            ("Scope", scope), ("Threshold", f"{pct}%"), ("Spent", f"${spent:,.2f}"), ("Budget", f"${amount:,.2f}"),
            ("Period", f"{period} ({data.get('period_key', '')})"), ("Hard limit", "yes" if data.get("hard") else "no"),
        ]  # fmt: skip
        return text, facts
    if kind == "request_blocked":
        findings = data.get("findings") or []
        rules = (
            sorted({str(f.get("rule", "")) for f in findings if isinstance(f, dict)})
            if isinstance(findings, list)
            else []
        )
        text = f"gatehouse blocked request {data.get('request_id', '')} (policy {data.get('policy', '')})."
        return text, [("Request", str(data.get("request_id", ""))), ("Policy", str(data.get("policy", ""))),
                      ("Rules", ", ".join(rules) or "-")]  # fmt: skip
    if kind == "deployment_down":
        deployment, reason = str(data.get("deployment", "")), str(data.get("reason", ""))
        text = f"gatehouse: deployment {deployment} is down (circuit breaker open: {reason or 'failures'})."
        return text, [("Deployment", deployment), ("Reason", reason or "-"), ("Replica", str(data.get("by", "")))]
    return f"gatehouse event {kind}", []


def _num(value: object) -> float:
    return float(value) if isinstance(value, int | float) else 0.0


def _escape(text: str) -> str:
    """Slack's mrkdwn control characters."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def format_event(envelope: Mapping[str, object]) -> dict[str, object]:
    """The gatehouse event envelope (`id`, `type`, `created_at`, `data`) → a Slack message."""
    kind = str(envelope.get("type", ""))
    data = envelope.get("data")
    text, facts = _text(kind, data if isinstance(data, dict) else {})
    blocks: list[dict[str, object]] = [
        {"type": "header", "text": {"type": "plain_text", "text": _TITLES.get(kind, "gatehouse event")[:150]}},
        {"type": "section", "text": {"type": "mrkdwn", "text": _escape(text)[:3000]}},
    ]
    if facts:
        blocks.append(
            {
                "type": "section",
                "fields": [{"type": "mrkdwn", "text": f"*{k}*\n{_escape(v)}"[:2000]} for k, v in facts[:10]],
            }
        )
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": f"delivery {envelope.get('id', '')}"}]})
    return {"text": _escape(text), "blocks": blocks}
