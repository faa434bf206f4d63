"""Reading a batch input file: each line runs or is reported with its line number and a reason."""

from __future__ import annotations

import json

import pytest

from services.batch.input import parse_body, read_lines
from shared.config import parse_config
from shared.errors import InvalidRequestError, NotFoundError, PayloadTooLargeError

CONFIG = parse_config(
    """
providers:
  mock: {kind: mock}
models:
  - name: mock-1
    aliases: [m1]
    deployments: [{provider: mock, model: mock-1}]
  - name: secret-model
    deployments: [{provider: mock, model: s}]
  - name: embed
    kind: embeddings
    deployments: [{provider: mock, model: e}]
"""
)
MODELS = CONFIG.model_index()
CHAT = "/v1/chat/completions"


def allows(model: str, canonical: str) -> bool:
    return canonical != "secret-model"


def line(custom_id: str, body: object, url: str = CHAT, **extra: object) -> str:
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": url, "body": body, **extra})


def chat(model: str = "mock-1", text: str = "hi", **extra: object) -> dict[str, object]:
    return {"model": model, "messages": [{"role": "user", "content": text}], **extra}


def read(text: str, endpoint: str = CHAT, max_bytes: int = 10_000, max_items: int = 100) -> list:  # type: ignore[type-arg]
    return read_lines(text.encode(), endpoint, MODELS, allows, max_item_bytes=max_bytes, max_items=max_items)


def test_valid_lines_become_requests_and_blank_lines_are_skipped() -> None:
    lines = read("\n".join([line("a", chat()), "", "   ", line("b", chat("m1", stream=True))]) + "\n")
    assert [(x.index, x.number, x.custom_id) for x in lines] == [(0, 1, "a"), (1, 4, "b")]
    assert all(x.error is None and x.request is not None for x in lines)
    b = lines[1].request
    assert b.model == "m1" and b.canonical == "mock-1"
    assert b.chat is not None and not b.chat.stream  # a batch answers whole


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("{not json", "invalid_json_line"),
        ("[1, 2]", "invalid_json_line"),
        (json.dumps({"method": "POST", "url": CHAT, "body": chat()}), "missing_custom_id"),
        (line("x", chat(), method="GET"), "invalid_method"),
        (line("x", chat(), url="/v1/embeddings"), "mismatched_url"),
        (json.dumps({"custom_id": "x", "url": CHAT}), "missing_body"),
        (line("x", chat("nope")), "model_not_found"),
        (line("x", chat("secret-model")), "model_not_found"),  # not allowed for the key: as if unknown
        (line("x", chat("embed")), "invalid_request"),  # an embeddings model on the chat endpoint
        (line("x", {"model": "mock-1", "messages": []}), "invalid_request"),
        (line("x", {"model": "mock-1", "messages": [{"role": "wizard", "content": "x"}]}), "invalid_request"),
        (line("x", chat(text="x" * 20_000)), "request_too_large"),
    ],
)
def test_a_line_that_cannot_run_is_reported_with_its_number(text: str, code: str) -> None:
    lines = read("\n".join([line("ok", chat()), text]))
    assert lines[0].error is None
    bad = lines[1]
    assert bad.request is None and bad.error is not None
    assert bad.error.code == code
    assert bad.error.message.startswith("Line 2: ")


def test_a_repeated_custom_id_is_reported_and_the_first_runs() -> None:
    lines = read("\n".join([line("a", chat()), line("a", chat())]))
    assert lines[0].error is None
    assert lines[1].error is not None and lines[1].error.code == "duplicate_custom_id"


def test_a_file_that_is_unusable_as_a_whole_is_refused() -> None:
    with pytest.raises(InvalidRequestError, match="no requests"):
        read("\n\n")
    with pytest.raises(InvalidRequestError, match="more than 2 requests"):
        read("\n".join(line(str(i), chat()) for i in range(3)), max_items=2)
    with pytest.raises(InvalidRequestError, match="UTF-8"):
        read_lines(b"\xff\xfe", CHAT, MODELS, allows, max_item_bytes=100, max_items=10)
    with pytest.raises(InvalidRequestError, match="endpoint"):
        read(line("a", chat()), endpoint="/v1/completions")


def test_item_bodies_are_checked_like_requests() -> None:
    body = json.dumps({"model": "embed", "input": ["a", "b"]}).encode()
    request = parse_body(body, "/v1/embeddings", MODELS, allows, 1000)
    assert request.embeddings is not None and request.canonical == "embed"
    with pytest.raises(PayloadTooLargeError):
        parse_body(body, "/v1/embeddings", MODELS, allows, 10)
    with pytest.raises(NotFoundError):
        parse_body(json.dumps(chat("secret-model")).encode(), CHAT, MODELS, allows, 1000)


NESTED = "[" * 20000 + "]" * 20000


def test_json_nested_too_deep_is_a_line_error_and_a_400_never_an_exception() -> None:
    deep_tools = '{"model": "mock-1", "messages": [{"role": "user", "content": "hi"}], "tools": ' + NESTED + "}"
    text = "\n".join(
        [
            '{"custom_id": "a", "body": ' + NESTED + "}",  # the line itself
            '{"custom_id": "b", "url": "/v1/chat/completions", "body": ' + deep_tools + "}",  # a field of its body
            line("c", chat()),
        ]
    )
    got = read(text, max_bytes=1_000_000)
    assert [(x.number, x.error.code if x.error else None) for x in got] == [
        (1, "invalid_json_line"),
        (2, "invalid_json_line"),
        (3, None),
    ]
    deep_object = '{"a": ' * 20000 + "1" + "}" * 20000
    chat_body = '{"model": "mock-1", "messages": [{"role": "user", "content": "hi"}], "response_format": ' + deep_object
    embeddings_body = '{"model": "embed", "input": "x", "unknown": ' + NESTED + "}"
    for body, endpoint in ((chat_body + "}", CHAT), (embeddings_body, "/v1/embeddings")):
        with pytest.raises(InvalidRequestError, match="nested too deeply"):
            parse_body(body.encode(), endpoint, MODELS, allows, 1_000_000)


def test_a_custom_id_is_bounded() -> None:
    got = read("\n".join([line("x" * 513, chat()), line("y" * 512, chat())]))
    assert got[0].error is not None and got[0].error.code == "invalid_custom_id"
    assert got[1].error is None and got[1].custom_id == "y" * 512


def test_a_refused_lines_record_names_the_model_its_body_asked_for() -> None:
    from services.batch.jobs import requested_model

    assert requested_model(b'{"model": "nope", "messages": []}') == "nope"
    assert requested_model(b'{"model": "' + b"m" * 1000 + b'"}') == "m" * 256
    for body in (
        b"",
        b"[1]",
        b'{"model": 5}',
        b'{"messages": []}',
        b"{bad",
        b'{"a":' + b"[" * 200_000 + b"]" * 200_000 + b"}",
    ):
        assert requested_model(body) == ""
