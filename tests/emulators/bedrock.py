"""An Amazon Bedrock Runtime emulator (Converse and ConverseStream), written from the public API reference.

Auth: a Bedrock API key (`Authorization: Bearer <API_KEY>`), or AWS Signature Version 4: the
`Authorization` header must read `AWS4-HMAC-SHA256 Credential=<key id>/<yyyymmdd>/<region>/bedrock/
aws4_request, SignedHeaders=<…>, Signature=<64 hex>`, `X-Amz-Date` must be `yyyymmddThhmmssZ` on the
credential's date, host and x-amz-date must be signed, `X-Amz-Security-Token` must carry the session
token when one is configured — and the signature is recomputed here from the known secret (canonical
request, string to sign, derived key), independently of the signer under test. A bad one is answered as
Bedrock does: 403 with `x-amzn-ErrorType: InvalidSignatureException` (or UnrecognizedClientException).

Requests are validated as Converse validates them (messages alternate user/assistant and start with a
user turn, each content block holds exactly one member, tool blocks need a toolConfig). Answers are
deterministic; a prompt mentioning the weather with tools offered gets a `toolUse` (two with "both"); a
turn of `toolResult`s gets a text answer quoting them. Streams use the real AWS event stream binary
framing (prelude, headers, CRC32s), with messageStart, contentBlockStart/Delta/Stop, messageStop and
metadata events; model `err-429` answers ThrottlingException, `err-stream` throws a
modelStreamErrorException event mid-stream. Every request is recorded (`app.state.requests`).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import struct
import zlib
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

API_KEY = "bedrock-api-key-emulator"
ACCESS_KEY = "AKIAGATEHOUSEEMU0001"
SECRET_KEY = "gatehouse/emulator/secret/key/0000000000"
SESSION_TOKEN = "gatehouse-emulator-session-token"
REGION = "us-east-1"

_AUTH = re.compile(
    r"^AWS4-HMAC-SHA256 Credential=(?P<key>[A-Z0-9]{16,128})/(?P<date>\d{8})/(?P<region>[a-z0-9-]+)/bedrock/"
    r"aws4_request, SignedHeaders=(?P<signed>[a-z0-9;-]+), Signature=(?P<sig>[0-9a-f]{64})$"
)
_AMZ_DATE = re.compile(r"^\d{8}T\d{6}Z$")
BLOCK_KINDS = {"text", "image", "document", "toolUse", "toolResult", "reasoningContent", "cachePoint"}


def _error(status: int, kind: str, message: str) -> JSONResponse:
    return JSONResponse(
        {"message": message}, status_code=status, headers={"x-amzn-ErrorType": f"{kind}:http://internal.amazon.com/"}
    )


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def _check_sigv4(request: Request, body: bytes) -> JSONResponse | None:
    auth = request.headers.get("authorization", "")
    match = _AUTH.match(auth)
    if match is None:
        return _error(403, "IncompleteSignatureException", "Authorization header is not a valid SigV4 signature.")
    amz_date = request.headers.get("x-amz-date", "")
    if not _AMZ_DATE.match(amz_date) or amz_date[:8] != match["date"]:
        return _error(403, "IncompleteSignatureException", "X-Amz-Date is missing or does not match the credential.")
    if match["key"] != ACCESS_KEY:
        return _error(403, "UnrecognizedClientException", "The security token included in the request is invalid.")
    if match["region"] != REGION:
        return _error(403, "InvalidSignatureException", f"Credential should be scoped to a valid region '{REGION}'.")
    signed = match["signed"].split(";")
    if "host" not in signed or "x-amz-date" not in signed or signed != sorted(signed):
        return _error(403, "InvalidSignatureException", "host and x-amz-date must be signed, in order.")
    if request.app.state.session_token and request.headers.get("x-amz-security-token") != SESSION_TOKEN:
        return _error(403, "UnrecognizedClientException", "The security token included in the request is invalid.")
    # the canonical request (SigV4 for services other than S3: the path URI-encoded once more)
    path = quote(request.scope["raw_path"].decode(), safe="/~")
    headers = "".join(f"{h}:{' '.join(request.headers.get(h, '').split())}\n" for h in signed)
    canonical = "\n".join(
        ["POST", path, request.scope.get("query_string", b"").decode(), headers, ";".join(signed),
         hashlib.sha256(body).hexdigest()]
    )  # fmt: skip
    scope = f"{match['date']}/{REGION}/bedrock/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    key = _hmac(("AWS4" + SECRET_KEY).encode(), match["date"])
    for part in (REGION, "bedrock", "aws4_request"):
        key = _hmac(key, part)
    if not hmac.compare_digest(hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest(), match["sig"]):
        return _error(403, "InvalidSignatureException", "The request signature we calculated does not match.")
    return None


def _validate(body: dict[str, Any]) -> str:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "messages: must contain at least one message"
    for i, m in enumerate(messages):
        if m.get("role") not in ("user", "assistant"):
            return f"messages.{i}.role: must be user or assistant"
        if i == 0 and m["role"] != "user":
            return "A conversation must start with a user message."
        if i and messages[i - 1]["role"] == m["role"]:
            return "A conversation must alternate between user and assistant roles."
        content = m.get("content")
        if not isinstance(content, list) or not content:
            return f"messages.{i}.content: must not be empty"
        for block in content:
            if not isinstance(block, dict) or len(block) != 1 or next(iter(block)) not in BLOCK_KINDS:
                return f"messages.{i}.content: each block must have exactly one member"
            if ("toolUse" in block or "toolResult" in block) and "toolConfig" not in body:
                return "The toolConfig field must be defined when using toolUse and toolResult content blocks."
    for tool in (body.get("toolConfig") or {}).get("tools", []):
        spec = tool.get("toolSpec") or {}
        if not spec.get("name") or "json" not in (spec.get("inputSchema") or {}):
            return "toolConfig.tools: each toolSpec needs a name and inputSchema.json"
    return ""


def _words(body: dict[str, Any]) -> int:
    total = sum(len(b.get("text", "").split()) for m in body["messages"] for b in m["content"])
    return total + sum(len(s.get("text", "").split()) for s in body.get("system", [])) or 1


def _answer(body: dict[str, Any]) -> tuple[list[dict[str, Any]], str]:
    """(content blocks, stop reason)."""
    last = body["messages"][-1]["content"]
    results = [b["toolResult"] for b in last if "toolResult" in b]
    if results:
        quoted = " ".join(c.get("text", "") for r in results for c in r.get("content", []))
        return [{"text": f"Emulated Bedrock answer from the tool result: {quoted}"}], "end_turn"
    prompt = " ".join(b.get("text", "") for b in last if "text" in b)
    tools = (body.get("toolConfig") or {}).get("tools", [])
    if tools and "weather" in prompt.lower():
        name = tools[0]["toolSpec"]["name"]
        cities = ["Paris", "Tokyo"] if "both" in prompt.lower() else ["Paris"]
        uses = [{"toolUse": {"toolUseId": f"tooluse_emu{i}", "name": name, "input": {"city": c}}}
                for i, c in enumerate(cities)]  # fmt: skip
        return uses, "tool_use"
    return [{"text": "Emulated Bedrock reply to: " + " ".join(prompt.split()[:20])}], "end_turn"


def _header(name: str, value: str) -> bytes:
    raw = value.encode()
    return bytes([len(name)]) + name.encode() + b"\x07" + struct.pack(">H", len(raw)) + raw


def frame(headers: dict[str, str], payload: bytes) -> bytes:
    """One AWS event stream message: prelude (lengths + CRC32), headers, payload, message CRC32."""
    block = b"".join(_header(k, v) for k, v in headers.items())
    total = 12 + len(block) + len(payload) + 4
    prelude = struct.pack(">II", total, len(block))
    prelude += struct.pack(">I", zlib.crc32(prelude))
    message = prelude + block + payload
    return message + struct.pack(">I", zlib.crc32(message))


def event(kind: str, payload: dict[str, Any]) -> bytes:
    body = json.dumps({**payload, "p": "abcdefghijklmnopqrstuvwxyz"[: len(kind)]}).encode()  # Bedrock pads events
    return frame({":event-type": kind, ":content-type": "application/json", ":message-type": "event"}, body)


def exception(kind: str, message: str) -> bytes:
    headers = {":exception-type": kind, ":content-type": "application/json", ":message-type": "exception"}
    return frame(headers, json.dumps({"message": message}).encode())


def create_app(session_token: bool = True) -> Starlette:
    async def converse(request: Request) -> Response:
        raw = await request.body()
        stream = request.url.path.endswith("/converse-stream")
        model = request.path_params["model"]
        request.app.state.requests.append(
            {"path": request.scope["raw_path"].decode(), "headers": dict(request.headers), "raw": raw}
        )
        if request.headers.get("authorization", "").startswith("Bearer "):
            if request.headers["authorization"] != f"Bearer {API_KEY}":
                return _error(403, "UnrecognizedClientException", "The security token included is invalid.")
        elif (problem := _check_sigv4(request, raw)) is not None:
            return problem
        try:
            body = json.loads(raw)
        except ValueError:
            return _error(400, "ValidationException", "Request body is not valid JSON.")
        request.app.state.requests[-1]["body"] = body
        if problem := _validate(body):
            return _error(400, "ValidationException", problem)
        if model == "err-429":
            return _error(429, "ThrottlingException", "Too many requests, please wait before trying again.")
        if model == "err-long":
            return _error(400, "ValidationException", "Input is too long for requested model.")
        blocks, stop = _answer(body)
        out_words = sum(len(b.get("text", "").split()) for b in blocks) or 1
        usage = {"inputTokens": _words(body), "outputTokens": out_words, "totalTokens": _words(body) + out_words}
        if not stream:
            return JSONResponse(
                {
                    "output": {"message": {"role": "assistant", "content": blocks}},
                    "stopReason": stop,
                    "usage": usage,
                    "metrics": {"latencyMs": 12},
                }
            )

        async def events() -> AsyncIterator[bytes]:
            yield event("messageStart", {"role": "assistant"})
            for i, block in enumerate(blocks):
                if "toolUse" in block:
                    tool = block["toolUse"]
                    yield event(
                        "contentBlockStart",
                        {"start": {"toolUse": {"toolUseId": tool["toolUseId"], "name": tool["name"]}},
                         "contentBlockIndex": i},
                    )  # fmt: skip
                    args = json.dumps(tool["input"])
                    for j in range(0, len(args), 6):
                        yield event("contentBlockDelta", {"delta": {"toolUse": {"input": args[j : j + 6]}},
                                                          "contentBlockIndex": i})  # fmt: skip
                else:
                    words = block["text"].split(" ")
                    for k, word in enumerate(words):
                        if model == "err-stream" and k == 2:
                            yield exception("modelStreamErrorException", "The model stream failed.")
                            return
                        piece = word + (" " if k < len(words) - 1 else "")
                        yield event("contentBlockDelta", {"delta": {"text": piece}, "contentBlockIndex": i})
                yield event("contentBlockStop", {"contentBlockIndex": i})
            yield event("messageStop", {"stopReason": stop})
            yield event("metadata", {"usage": usage, "metrics": {"latencyMs": 12}})

        return StreamingResponse(events(), media_type="application/vnd.amazon.eventstream")

    app = Starlette(
        routes=[
            Route("/model/{model}/converse", converse, methods=["POST"]),
            Route("/model/{model}/converse-stream", converse, methods=["POST"]),
        ]
    )
    app.state.requests = []
    app.state.session_token = session_token
    return app
