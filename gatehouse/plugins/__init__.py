"""Plugins shipped with gatehouse (docs/plugins.md): `header_tags` (request headers → tags on the request's
ClickHouse row) and `slack_alerts` (a webhook body Slack-compatible incoming webhooks accept)."""
