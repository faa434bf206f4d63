"""Pass-through framing: only the model changes in a client's body, and events go out as they came."""

from __future__ import annotations

import json

import msgspec
import pytest

from services.router.providers.native_body import merge_header_lists, params_for, sse_frame, with_model
from services.router.sse import SseEvent, SseParser

# spacing, key order, number forms and escapes a re-encoding would change
BODY = (
    b'{"model": "claude-alias",  "max_tokens":1024,"temperature":1.0,'
    b'"system":[{"type":"text","text":"caf\\u00e9 \xe2\x80\x94 rules","cache_control":{"type":"ephemeral"}}],'
    b'"messages":[{"role":"user","content":"hi"}], "metadata": {"user_id":"u1"}}'
)


def test_only_the_model_is_replaced_and_every_other_value_keeps_its_bytes() -> None:
    out = with_model(BODY, "claude-sonnet-4-5")
    assert json.loads(out)["model"] == "claude-sonnet-4-5"
    assert {k: v for k, v in json.loads(out).items() if k != "model"} == {
        k: v for k, v in json.loads(BODY).items() if k != "model"
    }
    assert list(json.loads(out)) == list(json.loads(BODY))  # key order kept
    # values are the client's own bytes: 1.0 stays 1.0, the \u escape and the raw UTF-8 stay as written
    assert b'"temperature":1.0' in out
    assert b'"text":"caf\\u00e9 \xe2\x80\x94 rules"' in out
    assert b'"metadata":{"user_id":"u1"}' in out


def test_defaults_fill_only_absent_keys() -> None:
    out = json.loads(with_model(BODY, "m", {"temperature": 0.2, "top_k": 5}))
    assert out["temperature"] == 1.0 and out["top_k"] == 5


def test_a_body_that_is_not_an_object_is_refused() -> None:
    with pytest.raises(msgspec.DecodeError):
        with_model(b"[1, 2]", "m")


def test_params_keep_only_what_the_protocol_documents() -> None:
    params = {"max_tokens": 100, "reasoning_effort": "low", "top_k": 3}
    assert params_for(params, frozenset({"max_tokens", "top_k"})) == {"max_tokens": 100, "top_k": 3}


def test_events_are_written_again_as_they_came() -> None:
    wire = (
        b'event: message_start\ndata: {"type":"message_start"}\n\n'
        b'event: ping\ndata: {"type": "ping"}\n\n'
        b"data: line one\ndata: line two\n\n"
    )
    parser = SseParser()
    events = parser.feed(wire[:17]) + parser.feed(wire[17:])
    assert b"".join(sse_frame(e) for e in events) == wire
    assert sse_frame(SseEvent("error", b"{}")) == b"event: error\ndata: {}\n\n"


def test_header_lists_merge_without_repeats() -> None:
    assert merge_header_lists("a, b", None, "b,c") == "a,b,c"
    assert merge_header_lists(None, "") == ""
