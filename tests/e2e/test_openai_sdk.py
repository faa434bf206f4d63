"""The official openai SDK against the running stack: sync/async, stream/non-stream, errors, records."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.e2e.conftest import API_KEY, LIMITED_KEY, RunningStack

pytestmark = pytest.mark.e2e

HELLO = [{"role": "user", "content": "hello from the e2e suite"}]


_CLIENTS: dict[tuple[str, str], openai.OpenAI] = {}


def client(stack: RunningStack, key: str = API_KEY) -> openai.OpenAI:
    """One SDK client per key for the whole module, as an application would hold it."""
    found = _CLIENTS.get((stack.base_url, key))
    if found is None:
        found = _CLIENTS[(stack.base_url, key)] = openai.OpenAI(
            base_url=stack.base_url, api_key=key, max_retries=0, timeout=20
        )
    return found


@pytest.fixture(scope="module", autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    for c in _CLIENTS.values():
        c.close()
    _CLIENTS.clear()


def aclient(stack: RunningStack) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=stack.base_url, api_key=API_KEY, max_retries=0, timeout=20)


def record(stack: RunningStack, request_id: str) -> dict[str, object]:
    result = stack.wait_rows(
        "SELECT request_id, status, requested_model, provider, deployment, stream, input_tokens, output_tokens, "
        f"latency_ms, key_id, team, error_code FROM requests WHERE request_id = '{request_id}'",
        1,
    )
    assert len(result.rows) == 1, f"expected exactly one record for {request_id}, got {result.rows}"
    return dict(zip(result.columns, result.rows[0], strict=True))


def test_sync_non_stream_mock_is_recorded(running_stack: RunningStack) -> None:
    raw = client(running_stack).chat.completions.with_raw_response.create(model="mock-1", messages=HELLO)
    completion = raw.parse()
    request_id = raw.headers["x-request-id"]
    assert completion.choices[0].message.content.endswith("hello from the e2e suite")
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.completion_tokens > 0
    row = record(running_stack, request_id)
    assert row["status"] == 200
    assert row["requested_model"] == "mock-1"
    assert row["provider"] == "mock"
    assert row["stream"] in (0, False)
    assert row["input_tokens"] == completion.usage.prompt_tokens
    assert row["output_tokens"] == completion.usage.completion_tokens
    assert row["key_id"] == "e2e" and row["team"] == "qa"
    assert float(row["latency_ms"]) > 0  # type: ignore[arg-type]


def test_mock_answers_n_choices_and_accounts_all_of_them(running_stack: RunningStack) -> None:
    raw = client(running_stack).chat.completions.with_raw_response.create(model="mock-1", messages=HELLO, n=3)
    completion = raw.parse()
    assert [c.index for c in completion.choices] == [0, 1, 2]
    texts = [c.message.content or "" for c in completion.choices]
    assert all(t.endswith("hello from the e2e suite") for t in texts)
    assert completion.usage is not None
    assert completion.usage.completion_tokens == sum(len(t.split()) for t in texts)
    row = record(running_stack, raw.headers["x-request-id"])
    assert row["output_tokens"] == completion.usage.completion_tokens

    stream = client(running_stack).chat.completions.create(
        model="mock-1", messages=HELLO, n=3, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    streamed: dict[int, str] = {}
    finished: dict[int, str | None] = {}
    for chunk in chunks:
        for choice in chunk.choices:
            streamed[choice.index] = streamed.get(choice.index, "") + (choice.delta.content or "")
            if choice.finish_reason:
                finished[choice.index] = choice.finish_reason
    assert streamed == dict(enumerate(texts))
    assert finished == {0: "stop", 1: "stop", 2: "stop"}
    usage = chunks[-1].usage
    assert usage is not None and usage.completion_tokens == completion.usage.completion_tokens
    row = record(running_stack, stream.response.headers["x-request-id"])
    assert row["stream"] in (1, True)
    assert row["output_tokens"] == usage.completion_tokens


def test_sync_stream_with_usage_on_final_chunk(running_stack: RunningStack) -> None:
    stream = client(running_stack).chat.completions.create(
        model="gpt-emu", messages=HELLO, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Emulated OpenAI reply to: hello from the e2e suite"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == len(text.split())
    request_id = stream.response.headers["x-request-id"]
    row = record(running_stack, request_id)
    assert row["stream"] in (1, True)
    assert row["provider"] == "emu-openai"
    assert row["output_tokens"] == chunks[-1].usage.completion_tokens


def test_stream_without_include_usage_has_no_usage_chunk_but_is_accounted(running_stack: RunningStack) -> None:
    stream = client(running_stack).chat.completions.create(model="gpt-emu", messages=HELLO, stream=True)
    chunks = list(stream)
    assert all(c.usage is None for c in chunks)
    assert all(c.choices for c in chunks)
    row = record(running_stack, stream.response.headers["x-request-id"])
    assert int(row["output_tokens"]) > 0  # type: ignore[call-overload]
    # the gateway asked the upstream for usage even though the client did not
    sent = running_stack.emulators["openai"].state.requests[-1]["body"]
    assert sent["stream_options"] == {"include_usage": True}


async def test_async_non_stream_and_stream(running_stack: RunningStack) -> None:
    async with aclient(running_stack) as c:
        completion = await c.chat.completions.create(model="gpt-emu", messages=HELLO)
        assert completion.choices[0].message.content == "Emulated OpenAI reply to: hello from the e2e suite"
        stream = await c.chat.completions.create(
            model="mock-1", messages=HELLO, stream=True, stream_options={"include_usage": True}
        )
        pieces = [chunk async for chunk in stream]
    assert "".join(p.choices[0].delta.content or "" for p in pieces if p.choices).endswith("e2e suite")
    assert pieces[-1].usage is not None


def test_streamed_tool_calls_round_trip(running_stack: RunningStack) -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
            },
        }
    ]
    messages = [{"role": "user", "content": "What's the weather in both cities?"}]
    with client(running_stack).chat.completions.stream(model="gpt-emu", messages=messages, tools=tools) as s:
        final = s.get_final_completion()
    calls = final.choices[0].message.tool_calls
    assert calls is not None and [c.function.arguments for c in calls] == ['{"city": "Paris"}', '{"city": "Tokyo"}']
    assert final.choices[0].finish_reason == "tool_calls"


def test_embeddings_mock_and_openai(running_stack: RunningStack) -> None:
    c = client(running_stack)
    mock = c.embeddings.create(model="mock-embed", input=["a b", "c"])
    assert len(mock.data) == 2 and len(mock.data[0].embedding) == 64
    emu = c.embeddings.create(model="emu-embed", input="hello world")
    assert emu.data[0].embedding == [0.1] * 8


def test_models_lists_only_what_the_key_may_call(running_stack: RunningStack) -> None:
    assert "gpt-emu" in {m.id for m in client(running_stack).models.list()}
    assert [m.id for m in client(running_stack, LIMITED_KEY).models.list()] == ["mock-1"]
    with pytest.raises(openai.NotFoundError):
        client(running_stack, LIMITED_KEY).chat.completions.create(model="gpt-emu", messages=HELLO)


def test_errors_are_openai_errors_with_the_right_status(running_stack: RunningStack) -> None:
    with pytest.raises(openai.AuthenticationError):
        client(running_stack, "sk-wrong").chat.completions.create(model="mock-1", messages=HELLO)
    with pytest.raises(openai.NotFoundError) as nf:
        client(running_stack).chat.completions.create(model="no-such-model", messages=HELLO)
    assert nf.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as bad:
        client(running_stack).chat.completions.create(model="mock-1", messages=[])
    assert bad.value.param == "messages"
    with pytest.raises(openai.RateLimitError) as limited:
        client(running_stack).chat.completions.create(model="emu-429", messages=HELLO)
    assert limited.value.response.headers["retry-after"] == "7"
    with pytest.raises(openai.InternalServerError) as upstream:
        client(running_stack).chat.completions.create(model="emu-500", messages=HELLO)
    assert upstream.value.status_code == 502
    with pytest.raises(openai.InternalServerError) as down:
        client(running_stack).chat.completions.create(model="down", messages=HELLO)
    assert down.value.status_code == 502
    with pytest.raises(openai.InternalServerError) as slow:
        client(running_stack).chat.completions.create(model="emu-slow", messages=HELLO)
    assert slow.value.status_code == 504


def test_raw_http_bad_input(running_stack: RunningStack) -> None:
    url = f"{running_stack.base_url}/chat/completions"
    auth = {"Authorization": f"Bearer {API_KEY}"}
    with httpx.Client(timeout=10) as http:
        r = http.post(url, content=b"{not json", headers=auth)
        assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
        r = http.post(url, json={"messages": HELLO}, headers=auth)
        assert r.status_code == 400 and r.json()["error"]["param"] == "model"
        r = http.post(url, content=b"x" * (1024 * 1024 + 1), headers=auth)
        assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
        r = http.post(url, json={"model": "mock-1", "messages": HELLO})
        assert r.status_code == 401
        r = http.get(f"{running_stack.base_url}/nowhere")
        assert r.status_code == 404 and "error" in r.json()
        assert "x-request-id" in http.post(url, json={"model": "nope", "messages": HELLO}, headers=auth).headers


def test_failover_skips_unusable_deployments_and_records_attempts(running_stack: RunningStack) -> None:
    raw = client(running_stack).chat.completions.with_raw_response.create(model="failover", messages=HELLO)
    assert raw.parse().choices[0].message.content.startswith("Emulated OpenAI reply")
    rid = raw.headers["x-request-id"]
    result = running_stack.wait_rows(
        "SELECT deployment, length(attempts.status) AS n, attempts.error_code, attempts.error_message "
        f"FROM requests WHERE request_id = '{rid}'",
        1,
    )
    assert result.rows, result
    deployment, n, codes, messages = result.rows[0]
    assert deployment == "emu-openai/gpt-emu"
    assert n == 3
    # the provider's 401 is the gateway's key problem: recorded with the provider's words, then failed over
    assert codes[0] == "upstream_auth_error" and "Incorrect API key" in messages[0]


def test_a_provider_rejecting_the_gateways_key_is_a_502_not_the_clients_401(running_stack: RunningStack) -> None:
    with pytest.raises(openai.InternalServerError) as exc:
        client(running_stack).chat.completions.create(model="rejected-key", messages=HELLO)
    assert exc.value.status_code == 502
    assert exc.value.body == {
        "message": "The gateway's credentials for provider 'rejected' were rejected.",
        "type": "api_error",
        "param": None,
        "code": "upstream_auth_error",
    }
    row = record(running_stack, exc.value.response.headers["x-request-id"])
    assert row["status"] == 502 and row["error_code"] == "upstream_auth_error"


def test_failed_requests_are_recorded_too(running_stack: RunningStack) -> None:
    with pytest.raises(openai.NotFoundError) as nf:
        client(running_stack).chat.completions.create(model="missing-model", messages=HELLO)
    rid = nf.value.response.headers["x-request-id"]
    row = record(running_stack, rid)
    assert row["status"] == 404 and row["error_code"] == "model_not_found"
