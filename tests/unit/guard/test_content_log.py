"""The content log (pure): only callers that opted in are logged; what is stored is redacted by the policy's
findings whatever the policy did with the request (flag, redact, block); responses are captured before restores
and redacted the same way; a request refused unscanned stores nothing."""

from __future__ import annotations

from services.guard.content import MAX_TEXT_CHARS, ResponseCapture
from services.guard.core import Guard
from shared.config import parse_config
from shared.schemas.chat import Caller, ChatRequest
from shared.schemas.openai import chat_from_builtins

CONFIG = parse_config(
    """
guardrails:
  policies:
    redact:
      restore_response: true
      pii: {action: redact, entities: [email]}
      secrets: {action: block}
    flag-only:
      secrets: {action: flag}
      pii: {action: flag, entities: [email]}
    tiny:
      max_prompt_chars: 10
"""
)
SECRET = "ghp_" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8"
EMAIL = "jane.doe@example.com"


def request(text: str, policy: str, days: int = 7) -> ChatRequest:
    return ChatRequest(
        request_id="r1",
        api="chat",
        model="m",
        chat=chat_from_builtins({"model": "m", "messages": [{"role": "user", "content": text}]}),
        caller=Caller(key_id="k", team="ml", policy=policy, log_content_days=days),
    )


def test_callers_that_do_not_log_content_cost_nothing() -> None:
    checked = Guard(CONFIG).check(request(f"mail {EMAIL}", "redact", days=0))
    assert checked.content is None and checked.logged_by is None


def test_a_flagged_value_is_redacted_in_the_log_though_the_request_went_on_unredacted() -> None:
    checked = Guard(CONFIG).check(request(f"key {SECRET} and mail {EMAIL}", "flag-only"))
    assert checked.error is None and checked.summary.action == "flag"
    event = checked.content
    assert event is not None and event.event_id == "r1.input" and event.retention_days == 7
    [text] = event.texts
    assert text.location == "messages[0].content"
    assert SECRET not in text.text and EMAIL not in text.text
    assert text.text.startswith("key <") and "and mail <EMAIL_1>" in text.text and event.redactions == 2
    assert event.caller.team == "ml" and event.guard_action == "flag"


def test_a_blocked_prompt_is_logged_redacted() -> None:
    checked = Guard(CONFIG).check(request(f"key {SECRET}", "redact"))
    assert checked.error is not None and checked.content is not None
    assert checked.content.guard_action == "block" and SECRET not in checked.content.texts[0].text


def test_a_prompt_refused_for_its_size_is_not_stored_at_all() -> None:
    checked = Guard(CONFIG).check(request(f"too long for the policy {EMAIL}", "tiny"))
    assert checked.error is not None and checked.content is not None
    assert checked.content.texts == [] and checked.content.truncated


def test_responses_are_captured_from_chunks_and_redacted() -> None:
    guard = Guard(CONFIG)
    checked = guard.check(request(f"write to {EMAIL}", "redact"))
    assert checked.logged_by is not None
    capture = ResponseCapture("r1", request("x", "redact").caller, "m", checked.logged_by)
    for piece in ("Sure, I wrote to ", "<EMAIL_1> and to bob", "@example.org too"):
        capture.chunk(f'{{"choices":[{{"index":0,"delta":{{"content":"{piece}"}}}}]}}'.encode())
    capture.chunk(b'{"choices":[],"usage":{"prompt_tokens":1}}')
    event = capture.event("allow")
    assert event.event_id == "r1.output" and event.direction == "output"
    [text] = event.texts
    assert text.text.startswith("Sure, I wrote to <EMAIL_1> and to <EMAIL_") and "bob@" not in text.text


def test_whole_completions_native_events_and_limits() -> None:
    policy = Guard(CONFIG).rails.policy("redact")
    capture = ResponseCapture("r2", Caller(key_id="k", log_content_days=1), "m", policy)
    capture.completion(b'{"choices":[{"index":0,"message":{"content":"' + b"x" * (MAX_TEXT_CHARS + 5) + b'"}}]}')
    capture.native(b'event: content_block_delta\ndata: {"delta":{"type":"text_delta","text":"mail me at a@b.co"}}\n\n')
    event = capture.event("allow")
    assert event.truncated and len(event.texts[0].text) == MAX_TEXT_CHARS
    assert event.texts[1].location == "output" and "a@b.co" not in event.texts[1].text


def test_a_response_is_redacted_by_the_request_policy_too_when_its_output_policy_scans_for_less() -> None:
    config = parse_config(
        """
guardrails:
  policies:
    p:
      output_policy: secrets-only
      pii: {action: redact, entities: [email]}
    secrets-only:
      secrets: {action: block}
"""
    )
    checked = Guard(config).check(request("hello", "p"))
    assert checked.logged_by is not None and checked.logged_by.name == "secrets-only"
    capture = ResponseCapture("r1", request("x", "p").caller, "m", checked.logged_by, checked.policy)
    capture.completion(b'{"choices":[{"index":0,"message":{"content":"write to jo@example.com"}}]}')
    [text] = capture.event("allow").texts
    assert text.text == "write to <EMAIL_1>"
