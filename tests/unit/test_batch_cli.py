"""`gatehouse batch submit` turns bare bodies into OpenAI batch lines and sets the model."""

from __future__ import annotations

import json

from gatehouse.batch_cli import openai_lines


def test_bare_bodies_become_openai_batch_lines_and_the_model_is_set() -> None:
    text = "\n".join(
        [
            json.dumps({"messages": [{"role": "user", "content": "a"}]}),
            "",
            json.dumps({"custom_id": "keep", "body": {"model": "x", "messages": []}}),
            "not json",
        ]
    )
    lines = openai_lines(text, "mock-1", "/v1/chat/completions").decode().splitlines()
    first, second = json.loads(lines[0]), json.loads(lines[1])
    assert first == {
        "custom_id": "line-1",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"messages": [{"role": "user", "content": "a"}], "model": "mock-1"},
    }
    assert second["custom_id"] == "keep" and second["body"]["model"] == "mock-1" and second["method"] == "POST"
    assert lines[2] == "not json"  # the service reports it in the error file, with its line number
    assert json.loads(openai_lines(text, None, "/v1/chat/completions").decode().splitlines()[1])["body"]["model"] == "x"
