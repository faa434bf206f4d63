"""The guard's request path (pure): which texts are scanned, block/redact verdicts, and response filtering."""

from __future__ import annotations

import msgspec

from services.guard import texts
from services.guard.core import Guard
from services.guard.output import OutputFilter, needs_output_pass
from shared.config import parse_config
from shared.schemas.chat import Caller, ChatRequest, GuardSummary

CONFIG = parse_config(
    """
keys:
  - {id: k, env: K, policy: redact}
guardrails:
  policies:
    redact:
      restore_response: true
      output_policy: out
      pii: {action: redact, entities: [email]}
      secrets: {action: block}
    out:
      secrets: {action: block}
"""
)
SECRET = "ghp_" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8"


def request(body: dict[str, object], policy: str = "", api: str = "chat") -> ChatRequest:
    return ChatRequest(
        request_id="r1",
        api=api,
        model="m",
        body=msgspec.json.encode(body),
        caller=Caller(key_id="k", policy=policy),
    )


def test_text_slots_cover_contents_parts_tool_arguments_and_embeddings() -> None:
    body: dict[str, object] = {
        "messages": [
            {"role": "system", "content": "sys"},
            {"role": "user", "content": [{"type": "text", "text": "part"}, {"type": "image_url", "image_url": {}}]},
            {"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": '{"a":1}'}}]},
        ]
    }
    slots = texts.text_slots(body, "chat")
    assert [s.location for s in slots] == [
        "messages[0].content",
        "messages[1].content[0].text",
        "messages[2].tool_calls[0].function.arguments",
    ]
    texts.write(slots, ["A", "B", "C"])
    assert body["messages"][1]["content"][0]["text"] == "B"  # type: ignore[index]
    assert [s.location for s in texts.text_slots({"input": ["x", "y"]}, "embeddings")] == ["input[0]", "input[1]"]


def test_default_policy_blocks_a_secret_without_echoing_it() -> None:
    verdict = Guard(CONFIG).check(request({"messages": [{"role": "user", "content": f"token {SECRET}"}]}))
    assert verdict.error is not None and verdict.error.code == "content_policy_violation"
    assert SECRET not in verdict.error.message and "secrets." in verdict.error.message
    assert verdict.summary.action == "block"
    assert verdict.summary.findings[0].location == "messages[0].content"


def test_redaction_rewrites_the_forwarded_body_and_keeps_the_restore_map() -> None:
    verdict = Guard(CONFIG).check(
        request({"messages": [{"role": "user", "content": "mail a@example.com"}]}, policy="redact")
    )
    assert verdict.error is None and verdict.summary.action == "redact"
    forwarded = msgspec.json.decode(verdict.request.body)
    assert forwarded["messages"][0]["content"] == "mail <EMAIL_1>"
    assert verdict.summary.restore == {"<EMAIL_1>": "a@example.com"}
    assert verdict.summary.output_policy == "out" and needs_output_pass(verdict.summary)


def test_output_filter_restores_and_blocks_whole_completions() -> None:
    guard = Guard(CONFIG)
    restore = {"<EMAIL_1>": "a@example.com"}
    summary = GuardSummary(policy="redact", action="redact", restore=restore, output_policy="out")
    ok = OutputFilter(guard.rails, summary)
    body = msgspec.json.encode({"choices": [{"message": {"role": "assistant", "content": "sent to <EMAIL_1>"}}]})
    assert msgspec.json.decode(ok.completion(body))["choices"][0]["message"]["content"] == "sent to a@example.com"
    leak = OutputFilter(guard.rails, summary)
    leak.completion(msgspec.json.encode({"choices": [{"message": {"content": f"here: {SECRET}"}}]}))
    assert leak.error is not None and leak.findings and leak.findings[0].direction == "output"


def test_output_filter_streams_hold_back_and_release_at_the_end() -> None:
    guard = Guard(CONFIG)
    out = OutputFilter(guard.rails, GuardSummary(policy="redact", action="redact", output_policy="out"))
    released = ""
    words = ("hello " * 100).split(" ")
    for word in words:
        chunk = {"choices": [{"index": 0, "delta": {"content": word + " "}, "finish_reason": None}]}
        sent = out.chunk(msgspec.json.encode(chunk))
        if sent is not None:
            released += msgspec.json.decode(sent)["choices"][0]["delta"].get("content", "")
    assert 0 < len(released) < len(" ".join(words))  # the tail is still held back
    final = out.chunk(msgspec.json.encode({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}))
    assert final is not None
    released += msgspec.json.decode(final)["choices"][0]["delta"].get("content", "")
    assert released == "".join(w + " " for w in words)
