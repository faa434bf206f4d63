"""Client tags: bounded, and gatehouse's own tag names (a Responses `mcp` loop's `mcp_response`, an agent run's
`run_id`) are not the client's to set: a forged one would attach its rows to another response's or run's lookups."""

from __future__ import annotations

from services.ingress.tags import MAX_TAGS, RESERVED_TAGS, client_tags


def test_gatehouse_s_own_tags_are_not_taken_from_a_client() -> None:
    headers = {
        "x-gatehouse-tag-mcp_response": "req_of_someone_else",
        "x-gatehouse-tag-run_id": "their-run",
        "x-gatehouse-tag-ticket": "T-1",
        "authorization": "Bearer x",
    }
    assert client_tags(headers) == {"ticket": "T-1"}
    assert {"mcp_response", "run_id"} <= RESERVED_TAGS


def test_tags_are_bounded() -> None:
    headers = {f"x-gatehouse-tag-{i:02d}{'n' * 80}": "v" * 300 for i in range(MAX_TAGS + 4)}
    tags = client_tags(headers)
    assert len(tags) == MAX_TAGS
    assert all(len(name) == 64 and len(value) == 256 for name, value in tags.items())
