"""Azure OpenAI translator: URLs, headers, version-dependent fields, stream clean-up and errors; emulator; SDK."""

from __future__ import annotations

import json
from typing import Any

import httpx
import httpx2
import msgspec
import openai
import pytest

from services.router.providers.azure import DEFAULT_API_VERSION, AzureTranslator
from services.router.providers.base import Target
from services.router.sse import SseEvent
from shared.errors import (
    AuthenticationError,
    ContentPolicyViolation,
    ContextLengthExceeded,
    InvalidRequestError,
    NotFoundError,
    RateLimitError,
    ServiceUnavailableError,
    UpstreamError,
)
from tests.emulators import azure as emulator
from tests.unit.providers import roundtrip as rt
from tests.unit.providers.roundtrip import canonical, canonical_embeddings

T = AzureTranslator()
BASE = "https://res.openai.azure.com"
TARGET = Target(provider="azure", kind="azure", model="gpt-4o", api_base="http://azure.test", api_key=emulator.API_KEY)
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def _user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def _target(**kw: Any) -> Target:
    return Target(**{"provider": "azure", "kind": "azure", "model": "gpt-4o", "api_base": BASE, "api_key": "k", **kw})


# --- requests --------------------------------------------------------------------------------------


def test_deployment_url_key_header_and_body() -> None:
    req = T.chat_request(
        canonical({"model": "alias", "messages": [_user("hi")], "temperature": 0.1}), _target(), stream=False
    )
    assert req.url == f"{BASE}/openai/deployments/gpt-4o/chat/completions?api-version={DEFAULT_API_VERSION}"
    assert req.headers["api-key"] == "k" and "authorization" not in req.headers
    assert json.loads(req.body) == {"model": "gpt-4o", "messages": [_user("hi")], "temperature": 0.1}
    pinned = T.chat_request(
        canonical({"messages": [_user("x")]}), _target(api_version="2025-04-01-preview"), stream=False
    )
    assert pinned.url.endswith("/openai/deployments/gpt-4o/chat/completions?api-version=2025-04-01-preview")
    entra = _target(api_key=None, headers={"authorization": "Bearer tok"})
    req = T.chat_request(canonical({"messages": [_user("x")]}), entra, stream=False)
    assert req.headers["authorization"] == "Bearer tok" and "api-key" not in req.headers
    emb = T.embeddings_request(
        canonical_embeddings({"model": "e", "input": "x"}), _target(model="text-embedding-3-small")
    )
    assert emb.url == f"{BASE}/openai/deployments/text-embedding-3-small/embeddings?api-version={DEFAULT_API_VERSION}"


def test_v1_api_urls() -> None:
    v1 = T.chat_request(canonical({"messages": [_user("x")]}), _target(api_version="v1"), stream=False)
    assert v1.url == f"{BASE}/openai/v1/chat/completions"
    assert json.loads(v1.body)["model"] == "gpt-4o"
    based = T.chat_request(canonical({"messages": [_user("x")]}), _target(api_base=f"{BASE}/openai/v1/"), stream=False)
    assert based.url == f"{BASE}/openai/v1/chat/completions"
    assert (
        T.embeddings_request(canonical_embeddings({"input": "x"}), _target(api_version="v1")).url
        == f"{BASE}/openai/v1/embeddings"
    )


def test_stream_usage_and_version_dependent_fields() -> None:
    body = {"messages": [_user("x")], "stream_options": {"include_obfuscation": False}, "max_completion_tokens": 9}
    modern = json.loads(T.chat_request(canonical(body), _target(), stream=True).body)
    assert modern["stream"] is True
    assert modern["stream_options"] == {"include_obfuscation": False, "include_usage": True}
    assert modern["max_completion_tokens"] == 9
    old = json.loads(T.chat_request(canonical(body), _target(api_version="2024-06-01"), stream=True).body)
    assert "stream_options" not in old and old["max_tokens"] == 9 and "max_completion_tokens" not in old
    assert "stream" not in json.loads(
        T.chat_request(canonical({"messages": [_user("x")]}), _target(), stream=False).body
    )


# --- streams ---------------------------------------------------------------------------------------


def _wire(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


_EMPTY = {"created": 0, "id": "", "model": "", "object": ""}
_HEAD = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o"}
FILTER_CHUNK = _wire({"choices": [], **_EMPTY, "prompt_filter_results": [{"prompt_index": 0}]})
CONTENT = _wire({**_HEAD, "choices": [{"index": 0, "delta": {"content": "Hi"}, "finish_reason": None}]})
OFFSETS = {"check_offset": 0, "start_offset": 0, "end_offset": 9}
ANNOTATION = _wire({"choices": [{"index": 0, "finish_reason": None, "content_filter_offsets": OFFSETS}], **_EMPTY})
FINISH_NO_DELTA = _wire({**_HEAD, "choices": [{"index": 0, "finish_reason": "content_filter"}]})
USAGE = _wire(
    {
        **_HEAD,
        "choices": [],
        "usage": {
            "prompt_tokens": 5,
            "completion_tokens": 2,
            "total_tokens": 7,
            "prompt_tokens_details": {"cached_tokens": 1},
        },
    }
)


def test_stream_drops_filter_chunks_and_keeps_the_rest_as_bytes() -> None:
    stream = T.open_stream(_target(), rt.RESPONSE_ID, rt.CREATED)
    assert stream.feed(SseEvent("", FILTER_CHUNK)) == []
    assert stream.feed(SseEvent("", CONTENT)) == [CONTENT]  # untouched bytes
    assert stream.feed(SseEvent("", ANNOTATION)) == []
    (kept,) = stream.feed(SseEvent("", FINISH_NO_DELTA))
    assert isinstance(kept, bytes)
    choice = msgspec.json.decode(kept)["choices"][0]
    assert choice["delta"] == {} and choice["finish_reason"] == "content_filter"
    assert stream.finish_reason == "content_filter"
    assert stream.feed(SseEvent("", USAGE)) == [USAGE]
    assert stream.usage is not None and (stream.usage.input_tokens, stream.usage.cached_tokens) == (5, 1)
    assert not stream.done()
    assert stream.feed(SseEvent("", b"[DONE]")) == [] and stream.done()


def test_stream_error_keeps_its_meaning() -> None:
    stream = T.open_stream(_target(), rt.RESPONSE_ID, rt.CREATED)
    err = b'{"error":{"code":"content_filter","message":"The response was filtered","param":"prompt","status":400}}'
    with pytest.raises(ContentPolicyViolation):
        stream.feed(SseEvent("", err))
    with pytest.raises(UpstreamError):
        stream.feed(SseEvent("", b'{"error":{"code":"InternalServerError","message":"boom"}}'))


# --- errors ----------------------------------------------------------------------------------------


def _e(**err: Any) -> bytes:
    return json.dumps({"error": err}).encode()


def test_parse_error_mapping() -> None:
    cf = _e(
        message="The response was filtered due to the prompt triggering Azure OpenAI's content management policy.",
        type=None,
        param="prompt",
        code="content_filter",
        status=400,
        innererror={"code": "ResponsibleAIPolicyViolation", "content_filter_result": {}},
    )
    e = T.parse_error(400, cf, {})
    assert isinstance(e, ContentPolicyViolation) and e.param == "prompt" and e.status == 400
    ctx = _e(message="This model's maximum context length is 8192 tokens.", code="context_length_exceeded")
    assert isinstance(T.parse_error(400, ctx, {}), ContextLengthExceeded)
    limited = T.parse_error(
        429, _e(code="429", message="Please retry after 7 seconds."), {"retry-after": "7", "retry-after-ms": "6500"}
    )
    assert isinstance(limited, RateLimitError) and limited.retry_after == 6.5
    assert isinstance(T.parse_error(401, _e(code="401", message="Access denied"), {}), AuthenticationError)
    missing = T.parse_error(404, _e(code="DeploymentNotFound", message="The API deployment ..."), {})
    assert isinstance(missing, NotFoundError)
    numeric = _wire(
        {
            "requestid": "r1",
            "code": 400,
            "message": "Validation error at #/max_completion_tokens: Extra inputs are not permitted",
        }
    )
    validation = T.parse_error(400, numeric, {})
    assert type(validation) is InvalidRequestError and "max_completion_tokens" in validation.message
    assert type(T.parse_error(500, _e(code="InternalServerError", message="x"), {})) is UpstreamError
    assert isinstance(T.parse_error(503, b"<html>", {"retry-after": "3"}), ServiceUnavailableError)


# --- against the emulator --------------------------------------------------------------------------


async def test_emulator_chat_stream_and_usage() -> None:
    app = emulator.create_app()
    body = {"model": "my-alias", "messages": [{"role": "system", "content": "Be brief."}, _user("Hello Azure")]}
    out = await rt.chat(T, app, body, TARGET)
    assert out["choices"][0]["message"]["content"] == "Emulated Azure reply to: Hello Azure"
    assert out["usage"]["prompt_tokens"] > 0 and T.usage_of(out) is not None
    sent = app.state.requests[-1]
    assert sent["path"] == "/openai/deployments/gpt-4o/chat/completions"
    assert sent["query"] == {"api-version": DEFAULT_API_VERSION} and sent["headers"]["api-key"] == emulator.API_KEY
    chunks, stream = await rt.stream(T, app, body, TARGET)
    got = rt.assemble(chunks)
    assert got["content"] == "Emulated Azure reply to: Hello Azure" and got["finish_reason"] == "stop"
    assert all(c["id"] and c["object"] == "chat.completion.chunk" for c in chunks)  # the filter chunk is gone
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == out["usage"]
    assert stream.usage is not None and stream.usage.output_tokens == out["usage"]["completion_tokens"]


async def test_emulator_old_api_version_refuses_stream_options_which_the_translator_omits() -> None:
    app = emulator.create_app()
    old = Target("azure", "azure", "gpt-4o", "http://azure.test", api_key=emulator.API_KEY, api_version="2024-06-01")
    chunks, stream = await rt.stream(T, app, {"messages": [_user("Hi there")], "max_completion_tokens": 50}, old)
    assert rt.assemble(chunks)["content"] == "Emulated Azure reply to: Hi there" and stream.usage is None
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://azure.test") as client:
        raw = {"messages": [_user("x")], "stream": True, "stream_options": {"include_usage": True}}
        resp = await client.post(
            "/openai/deployments/gpt-4o/chat/completions?api-version=2024-06-01",
            json=raw,
            headers={"api-key": emulator.API_KEY},
        )
    assert resp.status_code == 400
    assert resp.json()["error"]["message"] == "Unrecognized request argument supplied: stream_options"


async def test_emulator_parallel_tool_calls_and_results() -> None:
    app = emulator.create_app()
    body: dict[str, Any] = {"messages": [_user("weather in both cities?")], "tools": [WEATHER]}
    out = await rt.chat(T, app, body, TARGET)
    message = out["choices"][0]["message"]
    assert [json.loads(c["function"]["arguments"]) for c in message["tool_calls"]] == [
        {"city": "Paris"},
        {"city": "Tokyo"},
    ]
    got = rt.assemble((await rt.stream(T, app, body, TARGET))[0])
    assert [json.loads(c["arguments"]) for c in got["tool_calls"]] == [{"city": "Paris"}, {"city": "Tokyo"}]
    assert got["finish_reason"] == "tool_calls"
    results = [{"role": "tool", "tool_call_id": c["id"], "content": c["id"][-1]} for c in message["tool_calls"]]
    answer = await rt.chat(T, app, {**body, "messages": [*body["messages"], message, *results]}, TARGET)
    assert answer["choices"][0]["message"]["content"] == "Based on the tool results: 0; 1"
    with pytest.raises(InvalidRequestError, match="did not have response messages"):
        await rt.chat(T, app, {**body, "messages": [*body["messages"], message, results[0]]}, TARGET)


async def test_emulator_content_filters() -> None:
    app = emulator.create_app()
    with pytest.raises(ContentPolicyViolation, match="content management policy"):
        await rt.chat(T, app, {"messages": [_user("something forbidden")]}, TARGET)
    out = await rt.chat(T, app, {"messages": [_user("please filter-output now")]}, TARGET)
    assert out["choices"][0]["finish_reason"] == "content_filter"
    got = rt.assemble((await rt.stream(T, app, {"messages": [_user("filter-output")]}, TARGET))[0])
    assert got["finish_reason"] == "content_filter"
    async_filter = Target("azure", "azure", "async-filter", "http://azure.test", api_key=emulator.API_KEY)
    chunks, _ = await rt.stream(T, app, {"messages": [_user("one two three four")]}, async_filter)
    assert rt.assemble(chunks)["content"] == "Emulated Azure reply to: one two three four"
    assert all("content_filter_offsets" not in ch for c in chunks for ch in c["choices"])


@pytest.mark.parametrize(
    ("deployment", "api_version", "key", "error", "retry_after"),
    [
        ("err-429", None, emulator.API_KEY, RateLimitError, 6.5),
        ("err-500", None, emulator.API_KEY, UpstreamError, None),
        ("err-503", None, emulator.API_KEY, ServiceUnavailableError, None),
        ("err-context", None, emulator.API_KEY, ContextLengthExceeded, None),
        ("no-such-deployment", None, emulator.API_KEY, NotFoundError, None),
        ("gpt-4o", "2019-01-01", emulator.API_KEY, NotFoundError, None),
        ("gpt-4o", None, "wrong-key", AuthenticationError, None),
    ],
)
async def test_emulator_errors(
    deployment: str, api_version: str | None, key: str, error: type[Exception], retry_after: float | None
) -> None:
    target = Target("azure", "azure", deployment, "http://azure.test", api_key=key, api_version=api_version)
    with pytest.raises(error) as caught:
        await rt.chat(T, emulator.create_app(), {"messages": [_user("hi")]}, target)
    assert getattr(caught.value, "retry_after", None) == retry_after


async def test_emulator_v1_api_and_embeddings() -> None:
    app = emulator.create_app()
    v1 = Target("azure", "azure", "gpt-4o-mini", "http://azure.test", api_key=emulator.API_KEY, api_version="v1")
    out = await rt.chat(T, app, {"messages": [_user("via v1")]}, v1)
    assert out["choices"][0]["message"]["content"] == "Emulated Azure reply to: via v1"
    assert app.state.requests[-1]["path"] == "/openai/v1/chat/completions"
    emb_target = Target("azure", "azure", "text-embedding-3-small", "http://azure.test", api_key=emulator.API_KEY)
    emb = await rt.embeddings(T, app, {"model": "e", "input": ["a b", "c"]}, emb_target)
    assert [d["index"] for d in emb["data"]] == [0, 1] and emb["usage"]["prompt_tokens"] == 3


async def test_openai_sdk_reads_the_emulator() -> None:
    app = emulator.create_app()
    client = openai.AsyncAzureOpenAI(
        azure_endpoint="http://azure.test",
        api_key=emulator.API_KEY,
        api_version="2024-10-21",
        http_client=httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app)),
        max_retries=0,
    )
    done = await client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "Hi SDK"}])
    assert done.choices[0].message.content == "Emulated Azure reply to: Hi SDK"
    stream = await client.chat.completions.create(
        model="gpt-4o",
        messages=[{"role": "user", "content": "Hi SDK"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    text, usage = "", None
    async for chunk in stream:
        text += "".join(c.delta.content or "" for c in chunk.choices)
        usage = chunk.usage or usage
    assert text == "Emulated Azure reply to: Hi SDK" and usage is not None and usage.total_tokens > 0
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "forbidden"}])
    assert caught.value.code == "content_filter"
    with pytest.raises(openai.RateLimitError):
        await client.chat.completions.create(model="err-429", messages=[{"role": "user", "content": "x"}])
    await client.close()
