"""An Azure OpenAI emulator (chat completions and embeddings), written from Azure's public REST reference.

Endpoints: `/openai/deployments/{deployment}/chat/completions|embeddings?api-version=…` and the v1 API
`/openai/v1/chat/completions|embeddings` (deployment in the body's `model`). It validates what Azure
validates that a translator can get wrong: the `api-key` header (or an Entra ID bearer token), a known
`api-version` (404 "Resource not found" otherwise), the deployment (404 DeploymentNotFound), unknown
body fields ("Unrecognized request argument supplied"), including `stream_options` and
`max_completion_tokens` on API versions older than 2024-09-01-preview, `stream_options` without
`stream`, message roles, and tool messages that answer the assistant's `tool_calls` (every call
answered, no stray ids).

Answers are deterministic and Azure-shaped: `prompt_filter_results` on the response and
`content_filter_results` on every choice; streams open with Azure's filter-only chunk (empty
`choices`, empty `id`/`model`/`object`), then role, content (or tool-call argument) deltas, the finish
chunk, a usage chunk when `stream_options.include_usage` is set, and `[DONE]`. Tool calls come when
tools are offered and the prompt mentions the weather (two when it says "both"). A prompt containing
"forbidden" is refused with Azure's content-filter 400; "filter-output" ends the answer with
finish_reason content_filter. Deployment names simulate the rest: `err-<status>` (429 with
Retry-After and retry-after-ms), `err-context` (context_length_exceeded), `async-filter` (annotation
chunks without a delta, as the asynchronous filter sends), `slow-<ms>`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

API_KEY = "azure-emulator-key"
ENTRA_TOKEN = "entra-emulator-token"
VERSIONS = {
    "2024-02-01",
    "2024-06-01",
    "2024-08-01-preview",
    "2024-09-01-preview",
    "2024-10-21",
    "2024-12-01-preview",
    "2025-01-01-preview",
    "2025-04-01-preview",
}
DEPLOYMENTS = {"gpt-4o", "gpt-4o-mini", "gpt-4.1", "o3-mini", "text-embedding-3-small", "async-filter"}
ROLES = {"system", "developer", "user", "assistant", "tool", "function"}
_CHAT_KEYS = {"messages", "model", "temperature", "top_p", "n", "stream", "stop", "max_tokens", "presence_penalty"}
_CHAT_KEYS |= {"frequency_penalty", "logit_bias", "user", "response_format", "seed", "tools", "tool_choice"}
_CHAT_KEYS |= {"functions", "function_call", "logprobs", "top_logprobs", "data_sources", "parallel_tool_calls"}
_CHAT_KEYS |= {"store", "metadata", "reasoning_effort", "modalities", "audio", "prediction", "user_security_context"}
_SINCE_2024_09 = {"stream_options", "max_completion_tokens"}
_EMBED_KEYS = {"input", "model", "user", "input_type", "encoding_format", "dimensions"}
_SAFE = {"filtered": False, "severity": "safe"}
_CHOICE_FILTER = {"hate": _SAFE, "self_harm": _SAFE, "sexual": _SAFE, "violence": _SAFE}
_PROMPT_FILTER = [
    {
        "prompt_index": 0,
        "content_filter_results": {**_CHOICE_FILTER, "jailbreak": {"filtered": False, "detected": False}},
    }
]


def _error(
    http_status: int, message: str, code: str | None = None, headers: dict[str, str] | None = None, **extra: Any
) -> JSONResponse:
    body = {"error": {"code": code or str(http_status), "message": message, **extra}}
    return JSONResponse(body, status_code=http_status, headers=headers)


def _invalid(message: str, param: str | None = None, code: str | None = None) -> JSONResponse:
    body = {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": code}}
    return JSONResponse(body, status_code=400)


def _modern(version: str | None) -> bool:
    return version is None or version[:10] >= "2024-09-01"


def _auth(request: Request) -> Response | None:
    key = request.headers.get("api-key")
    bearer = request.headers.get("authorization", "")
    if key is None and not bearer:
        return _error(
            401,
            "Access denied due to missing subscription key. Make sure to include subscription key when making "
            "requests to an API.",
        )
    if key != API_KEY and bearer != f"Bearer {ENTRA_TOKEN}":
        return _error(
            401,
            "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a valid key "
            "for an active subscription and use a correct regional API endpoint for your resource.",
        )
    return None


def _simulated(deployment: str, version: str | None) -> Response | None:
    if deployment.startswith("err-") and deployment[4:].isdigit():
        status = int(deployment[4:])
        if status == 429:
            message = (
                f"Requests to the ChatCompletions_Create Operation under Azure OpenAI API version {version} have "
                "exceeded token rate limit of your current AIServices S0 pricing tier. Please retry after 7 seconds."
            )
            return _error(429, message, headers={"retry-after": "7", "retry-after-ms": "6500"})
        if status == 500:
            return _error(500, "The server had an error while processing your request. Sorry about that!")
        return _error(status, f"emulated error {status}")
    if deployment == "err-context":
        return _invalid(
            "This model's maximum context length is 128000 tokens. However, your messages resulted in 130512 "
            "tokens. Please reduce the length of the messages.",
            param="messages",
            code="context_length_exceeded",
        )
    if deployment not in DEPLOYMENTS and not deployment.startswith("slow-"):
        return _error(
            404,
            "The API deployment for this resource does not exist. If you created the deployment within the last 5 "
            "minutes, please wait a moment and try again.",
            code="DeploymentNotFound",
        )
    return None


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


def _check_messages(messages: Any) -> Response | None:
    if not isinstance(messages, list) or not messages:
        return _invalid("'messages' is a required property", param="messages")
    pending: list[str] = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            return _invalid(f"Invalid value for 'messages[{i}].role'.", param=f"messages[{i}].role")
        role = m["role"]
        if role == "tool":
            if m.get("tool_call_id") not in pending:
                return _invalid(
                    "Invalid parameter: messages with role 'tool' must be a response to a preceeding message with "
                    "'tool_calls'.",
                    param=f"messages.[{i}].role",
                )
            pending.remove(m["tool_call_id"])
            continue
        if pending:
            return _unanswered(pending)
        if role == "assistant":
            pending = [c.get("id") for c in m.get("tool_calls") or [] if isinstance(c, dict)]
    return _unanswered(pending) if pending else None


def _unanswered(pending: list[str]) -> Response:
    return _invalid(
        "An assistant message with 'tool_calls' must be followed by tool messages responding to each "
        f"'tool_call_id'. The following tool_call_ids did not have response messages: {', '.join(pending)}",
        param="messages",
    )


def _tool_calls(body: dict[str, Any], prompt: str, digest: str) -> list[dict[str, Any]]:
    tools = [t for t in body.get("tools") or [] if isinstance(t, dict) and t.get("type") == "function"]
    choice = body.get("tool_choice", "auto")
    if not tools or choice == "none":
        return []
    forced = choice == "required" or isinstance(choice, dict)
    if "weather" not in prompt.lower() and not forced:
        return []
    fn = tools[0]["function"]
    if isinstance(choice, dict):
        fn = next((t["function"] for t in tools if t["function"]["name"] == choice["function"]["name"]), fn)
    cities = (
        ["Paris", "Tokyo"] if "both" in prompt.lower() and body.get("parallel_tool_calls") is not False else ["Paris"]
    )
    return [
        {
            "id": f"call_{digest[:8]}{i}",
            "type": "function",
            "function": {"name": fn["name"], "arguments": json.dumps({"city": c})},
        }
        for i, c in enumerate(cities)
    ]


def _usage(messages: list[Any], completion: str) -> dict[str, Any]:
    prompt = sum(len(_text(m.get("content")).split()) + 4 for m in messages)
    out = len(completion.split()) or 1
    return {
        "prompt_tokens": prompt,
        "completion_tokens": out,
        "total_tokens": prompt + out,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
    }


async def _stream(
    base: dict[str, Any],
    calls: list[dict[str, Any]],
    text: str,
    finish: str,
    usage: dict[str, Any] | None,
    annotate: bool,
) -> AsyncIterator[bytes]:
    def frame(obj: dict[str, Any]) -> bytes:
        return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"

    def chunk(delta: dict[str, Any], reason: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "finish_reason": reason, "logprobs": None, "content_filter_results": {}}
        if delta or reason:
            choice["content_filter_results"] = _CHOICE_FILTER
        return frame({**base, "choices": [choice], "usage": None})

    yield frame(
        {"choices": [], "created": 0, "id": "", "model": "", "object": "", "prompt_filter_results": _PROMPT_FILTER}
    )
    yield chunk({"role": "assistant", "content": "", "refusal": None})
    for i, call in enumerate(calls):
        head = {
            "index": i,
            "id": call["id"],
            "type": "function",
            "function": {"name": call["function"]["name"], "arguments": ""},
        }
        yield chunk({"tool_calls": [head]})
        args = call["function"]["arguments"]
        for k in range(0, len(args), 6):
            yield chunk({"tool_calls": [{"index": i, "function": {"arguments": args[k : k + 6]}}]})
    words = text.split(" ") if text else []
    for k, word in enumerate(words):
        yield chunk({"content": word + (" " if k < len(words) - 1 else "")})
        if annotate and k == 1:
            offsets = {"check_offset": 0, "start_offset": 0, "end_offset": 12}
            note = {
                "index": 0,
                "finish_reason": None,
                "content_filter_results": _CHOICE_FILTER,
                "content_filter_offsets": offsets,
            }
            yield frame({"choices": [note], "created": 0, "id": "", "model": "", "object": ""})
    yield chunk({}, finish)
    if usage is not None:
        yield frame({**base, "choices": [], "usage": usage})
    yield b"data: [DONE]\n\n"


def create_app() -> Starlette:
    async def _read(request: Request) -> tuple[dict[str, Any] | None, Response | None]:
        raw = await request.body()
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        headers = {k.lower(): v for k, v in request.headers.items()}
        request.app.state.requests.append(
            {"path": request.url.path, "query": dict(request.query_params), "headers": headers, "body": body}
        )
        denied = _auth(request)
        if denied is not None:
            return None, denied
        if not isinstance(body, dict):
            return None, _invalid("We could not parse the JSON body of your request.")
        return body, None

    def _target(request: Request, body: dict[str, Any]) -> tuple[str, str | None, Response | None]:
        version = request.query_params.get("api-version")
        deployment = request.path_params.get("deployment")
        if deployment is None:  # the v1 API: the deployment is the body's model, api-version optional
            model = body.get("model")
            if not isinstance(model, str) or not model:
                return "", None, _invalid("you must provide a model parameter", param="model")
            return model, None, None
        if version not in VERSIONS:
            return "", version, _error(404, "Resource not found")
        return str(deployment), version, None

    async def chat(request: Request) -> Response:
        body, failed = await _read(request)
        if body is None:
            assert failed is not None
            return failed
        deployment, version, failed = _target(request, body)
        if failed is not None:
            return failed
        allowed = _CHAT_KEYS | (_SINCE_2024_09 if _modern(version) else set())
        unknown = sorted(set(body) - allowed)
        if unknown:
            return _invalid(f"Unrecognized request argument supplied: {unknown[0]}")
        failed = _simulated(deployment, version) or _check_messages(body.get("messages"))
        if failed is not None:
            return failed
        stream = bool(body.get("stream"))
        if body.get("stream_options") is not None and not stream:
            return _invalid(
                "The 'stream_options' parameter is only allowed when 'stream' is enabled.", param="stream_options"
            )
        if deployment.startswith("slow-"):
            await asyncio.sleep(int(deployment[5:]) / 1000)
        messages = body["messages"]
        last = messages[-1]
        prompt = _text(last.get("content")) if last.get("role") == "user" else ""
        if "forbidden" in prompt:
            return _error(
                400,
                "The response was filtered due to the prompt triggering Azure OpenAI's content management policy. "
                "Please modify your prompt and retry. To learn more about our content filtering policies please read "
                "our documentation: https://go.microsoft.com/fwlink/?linkid=2198766",
                code="content_filter",
                type=None,
                param="prompt",
                status=400,
                innererror={
                    "code": "ResponsibleAIPolicyViolation",
                    "content_filter_result": {**_CHOICE_FILTER, "violence": {"filtered": True, "severity": "medium"}},
                },
            )
        digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
        calls = _tool_calls(body, prompt, digest)
        if last.get("role") == "tool":
            results = [_text(m.get("content")) for m in messages if m.get("role") == "tool"]
            text = "Based on the tool results: " + "; ".join(results)
        else:
            text = "" if calls else "Emulated Azure reply to: " + " ".join(prompt.split()[:20])
        finish = "tool_calls" if calls else "stop"
        if "filter-output" in prompt:
            text, finish = "", "content_filter"
        base = {
            "id": f"chatcmpl-azemu{digest[:16]}",
            "object": "chat.completion.chunk" if stream else "chat.completion",
            "created": 1_700_000_000,
            "model": "gpt-4o-2024-11-20",
            "system_fingerprint": "fp_azemu",
        }
        if stream:
            include = bool((body.get("stream_options") or {}).get("include_usage"))
            usage = _usage(messages, text) if include else None
            events = _stream(base, calls, text, finish, usage, deployment == "async-filter")
            return StreamingResponse(events, media_type="text/event-stream")
        message: dict[str, Any] = {"role": "assistant", "content": text or None, "refusal": None}
        if calls:
            message["tool_calls"] = calls
        choice = {
            "index": 0,
            "message": message,
            "finish_reason": finish,
            "logprobs": None,
            "content_filter_results": _CHOICE_FILTER,
        }
        return JSONResponse(
            {**base, "choices": [choice], "usage": _usage(messages, text), "prompt_filter_results": _PROMPT_FILTER}
        )

    async def embeddings(request: Request) -> Response:
        body, failed = await _read(request)
        if body is None:
            assert failed is not None
            return failed
        deployment, version, failed = _target(request, body)
        if failed is not None:
            return failed
        unknown = sorted(set(body) - _EMBED_KEYS)
        if unknown:
            return _invalid(f"Unrecognized request argument supplied: {unknown[0]}")
        failed = _simulated(deployment, version)
        if failed is not None:
            return failed
        inputs = body.get("input")
        if isinstance(inputs, str):
            inputs = [inputs]
        if not inputs:
            return _invalid("'input' is a required property", param="input")
        data = [{"object": "embedding", "index": i, "embedding": [0.01 * (i + 1)] * 8} for i in range(len(inputs))]
        tokens = sum(len(str(x).split()) for x in inputs)
        return JSONResponse(
            {
                "object": "list",
                "data": data,
                "model": "text-embedding-3-small",
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )

    app = Starlette(
        routes=[
            Route("/openai/deployments/{deployment}/chat/completions", chat, methods=["POST"]),
            Route("/openai/deployments/{deployment}/embeddings", embeddings, methods=["POST"]),
            Route("/openai/v1/chat/completions", chat, methods=["POST"]),
            Route("/openai/v1/embeddings", embeddings, methods=["POST"]),
        ]
    )
    app.state.requests = []
    return app
