"""Payload sizes end to end: a body of any size up to server.max_body_bytes works (chat, and an Anthropic
Messages body, which travels as the client's own body plus its canonical translation), one byte over gets
413, each with its record; a response larger than one NATS message comes back whole (BodyParts) with its
usage recorded; an upstream answer over the provider's max_response_bytes is a clean 502 with its record.

Bodies are built to an exact byte count and sent raw (httpx): the official SDKs cannot say how many bytes
they send. The shipped default limit (4 MiB, where nats-server's own default max_payload of 1 MiB used to
refuse a 2 MB body on the bus) runs on a second, small stack."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import msgspec
import pytest

from gatehouse.launcher import Stack
from gatehouse.natsserver import free_port
from shared.config import ServerConfig, hash_key
from shared.natsconn import server_max_payload
from tests.e2e.conftest import API_KEY, CAPPED_RESPONSE_BYTES, MAX_BODY_BYTES, RunningStack

pytestmark = pytest.mark.e2e

WORDS = b"lorem ipsum dolor sit amet "
MOCK_SAID = "This is the gatehouse mock provider. You said: "
DEFAULT_KEY = "sk-e2e-default-limits"
RECORD = (
    "SELECT request_id, status, error_code, request_bytes, response_bytes, input_tokens, provider, "
    "attempts.error_code FROM requests WHERE request_id = '{}'"
)


def padded(template: dict[str, object], size: int) -> bytes:
    """`template` as JSON of exactly `size` bytes: its one "{pad}" string filled with words."""
    empty = msgspec.json.encode(template).replace(b'"{pad}"', b'""')
    fill = size - len(empty)
    assert fill > 0, f"{size} bytes is smaller than the template"
    text = (WORDS * (fill // len(WORDS) + 1))[:fill]
    body = empty.replace(b'""', b'"' + text + b'"', 1)
    assert len(body) == size
    return body


def chat_body(size: int, model: str = "mock-1") -> bytes:
    return padded({"messages": [{"role": "user", "content": "{pad}"}], "model": model}, size)


def messages_body(size: int, model: str) -> bytes:
    return padded({"messages": [{"role": "user", "content": "{pad}"}], "model": model, "max_tokens": 64}, size)


def post(base_url: str, path: str, body: bytes | Iterator[bytes], key: str = API_KEY) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}", "content-type": "application/json", "anthropic-version": "2023-06-01"}
    return httpx.post(f"{base_url}{path}", content=body, headers=headers, timeout=60)


def record(stack: RunningStack, response: httpx.Response) -> dict[str, object]:
    result = stack.wait_rows(RECORD.format(response.headers["x-request-id"]), 1)
    assert len(result.rows) == 1, result.rows
    return dict(zip(result.columns, result.rows[0], strict=True))


# ---- the e2e stack: server.max_body_bytes = 1 MiB ----------------------------------------------------
def test_a_chat_body_of_exactly_the_limit_works_and_one_byte_more_is_413(running_stack: RunningStack) -> None:
    at_limit = post(running_stack.base_url, "/chat/completions", chat_body(MAX_BODY_BYTES))
    assert at_limit.status_code == 200, at_limit.text
    assert at_limit.json()["choices"][0]["message"]["content"].startswith(MOCK_SAID + "lorem ipsum dolor sit amet")
    row = record(running_stack, at_limit)
    assert (row["status"], row["request_bytes"]) == (200, MAX_BODY_BYTES)
    words = len(msgspec.json.decode(chat_body(MAX_BODY_BYTES))["messages"][0]["content"].split())
    assert row["input_tokens"] == words, "the mock counts words: the whole prompt reached it"

    over = post(running_stack.base_url, "/chat/completions", chat_body(MAX_BODY_BYTES + 1))
    assert over.status_code == 413, over.text
    assert over.json()["error"]["code"] == "request_too_large"
    assert record(running_stack, over)["status"] == 413


def test_a_chunked_body_over_the_limit_is_413_with_its_record(running_stack: RunningStack) -> None:
    body = chat_body(MAX_BODY_BYTES + 1)  # no content-length: ingress counts as it reads

    def pieces() -> Iterator[bytes]:
        for i in range(0, len(body), 64 * 1024):
            yield body[i : i + 64 * 1024]

    over = post(running_stack.base_url, "/chat/completions", pieces())
    assert over.status_code == 413, over.text
    row = record(running_stack, over)
    assert (row["status"], row["error_code"]) == (413, "request_too_large")


@pytest.mark.parametrize(
    ("model", "provider"),
    [("mock-1", "mock"), ("claude-native", "emu-anthropic")],
    ids=["translated", "native-and-translated"],
)
def test_a_messages_body_at_the_limit_works(running_stack: RunningStack, model: str, provider: str) -> None:
    """To an Anthropic deployment the client's own body travels with its canonical translation: twice the
    body on the bus, which nats-server's max_payload must carry."""
    response = post(running_stack.base_url, "/messages", messages_body(MAX_BODY_BYTES, model))
    assert response.status_code == 200, response.text
    assert response.json()["type"] == "message"
    row = record(running_stack, response)
    assert (row["status"], row["provider"], row["request_bytes"]) == (200, provider, MAX_BODY_BYTES)
    assert int(str(row["input_tokens"])) > 100_000

    over = post(running_stack.base_url, "/messages", messages_body(MAX_BODY_BYTES + 1, model))
    assert over.status_code == 413 and over.json()["error"]["type"] == "request_too_large", over.text
    assert record(running_stack, over)["status"] == 413


def test_an_embeddings_response_larger_than_a_nats_message_comes_back_whole(running_stack: RunningStack) -> None:
    inputs = [f"input number {i}" for i in range(100)]
    body = msgspec.json.encode({"model": "mock-embed", "input": inputs, "dimensions": 3072})
    response = post(running_stack.base_url, "/embeddings", body)
    assert response.status_code == 200, response.text[:300]
    assert len(response.content) > server_max_payload(MAX_BODY_BYTES), "larger than any one message on the bus"
    answer = response.json()
    assert [d["index"] for d in answer["data"]] == list(range(100))
    assert {len(d["embedding"]) for d in answer["data"]} == {3072}
    assert answer["usage"]["prompt_tokens"] == 300
    row = record(running_stack, response)
    assert (row["status"], row["input_tokens"], row["response_bytes"]) == (200, 300, len(response.content))


def test_an_upstream_answer_over_max_response_bytes_is_a_clean_502_with_its_record(
    running_stack: RunningStack,
) -> None:
    under = post(running_stack.base_url, "/chat/completions", chat_body(200, "big-under"))
    assert under.status_code == 200, under.text[:300]
    assert len(under.json()["choices"][0]["message"]["content"]) == CAPPED_RESPONSE_BYTES // 2

    over = post(running_stack.base_url, "/chat/completions", chat_body(200, "big-over"))
    assert over.status_code == 502, over.text[:300]
    error = over.json()["error"]
    assert error["code"] == "upstream_response_too_large" and str(CAPPED_RESPONSE_BYTES) in error["message"]
    row = record(running_stack, over)
    assert (row["status"], row["error_code"], row["provider"]) == (
        502,
        "upstream_response_too_large",
        "emu-openai-capped",
    )
    assert row["attempts.error_code"] == ["upstream_response_too_large"], "the attempt that was paid for"


# ---- the shipped default: server.max_body_bytes = 4 MiB ----------------------------------------------
@pytest.fixture(scope="module")
def default_limits(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp: Path = tmp_path_factory.mktemp("default-limits")
    config = tmp / "gatehouse.yaml"
    config.write_text(
        f"""
server: {{host: 127.0.0.1, port: 0}}
keys: [{{id: k, sha256: {hash_key(DEFAULT_KEY)}}}]
providers: {{mock: {{kind: mock}}}}
models: [{{name: mock-1, deployments: [{{provider: mock, model: mock-1}}]}}]
"""
    )
    stack = Stack(
        config=config, data_dir=tmp / "data", host="127.0.0.1", port=free_port(), prefix="limits", nats_port=0
    )
    stack.start()
    try:
        assert stack.wait_ready(90), "stack did not become ready"
        yield f"{stack.ingress_url}/v1"
    finally:
        stack.stop()


def test_the_default_limit_takes_4_mib_and_a_2_mb_body(default_limits: str) -> None:
    limit = ServerConfig().max_body_bytes
    assert limit == 4 * 1024 * 1024
    for size in (2_000_000, limit):
        response = post(default_limits, "/chat/completions", chat_body(size), DEFAULT_KEY)
        assert response.status_code == 200, (size, response.text[:300])
    response = post(default_limits, "/messages", messages_body(limit, "mock-1"), DEFAULT_KEY)
    assert response.status_code == 200, response.text[:300]
    over = post(default_limits, "/chat/completions", chat_body(limit + 1), DEFAULT_KEY)
    assert over.status_code == 413, over.text[:300]
