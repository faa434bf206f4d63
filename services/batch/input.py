"""A job's input (pure): an OpenAI Batch JSONL file → one `Line` per request (its body checked, or why it
cannot run); an item's body → the canonical request, checked against the key and the job's endpoint.

A line that cannot run (not JSON, no `custom_id`, a repeated one, another endpoint, an unknown model, a
body over the size limit or not a valid request) becomes a line of the job's error file; the rest run.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import msgspec

from shared.config import ModelConfig
from shared.errors import ErrorInfo, GatewayError, InvalidRequestError, NotFoundError, PayloadTooLargeError
from shared.schemas.openai import ChatCompletionRequest, EmbeddingsRequest
from shared.validate import chat_request, embeddings_request

MAX_ITEM_ID = 512  # characters of an item id (a line's `custom_id`, a queue item's `item_id`)
# the endpoints a batch may call, and the API name of their requests (ChatRequest.api)
ENDPOINTS: dict[str, str] = {"/v1/chat/completions": "chat", "/v1/embeddings": "embeddings"}

Allows = Callable[[str, str], bool]  # (model as named, canonical name) → the key may call it


@dataclass(frozen=True, slots=True)
class Request:
    """A valid item body in canonical form."""

    model: str  # as the body names it
    canonical: str  # the model's name in the config
    chat: ChatCompletionRequest | None = None
    embeddings: EmbeddingsRequest | None = None


@dataclass(frozen=True, slots=True)
class Line:
    """One request of an input file: its body and request, or the error that keeps it from running."""

    index: int  # 0-based position among the file's non-blank lines
    number: int  # 1-based line number in the file (for messages)
    custom_id: str | None
    body: bytes = b""
    request: Request | None = None
    error: ErrorInfo | None = None


class _LineObject(msgspec.Struct, kw_only=True):
    custom_id: str | None = None
    method: str | None = None
    url: str | None = None
    body: msgspec.Raw = msgspec.Raw(b"")


_LINE = msgspec.json.Decoder(_LineObject)


def check_endpoint(endpoint: str) -> str:
    """The API name of a batch endpoint, or a 400 naming the ones supported."""
    api = ENDPOINTS.get(endpoint)
    if api is None:
        raise InvalidRequestError(
            f"Invalid endpoint {endpoint[:100]!r}: batches support {', '.join(sorted(ENDPOINTS))}.", param="endpoint"
        )
    return api


def parse_body(
    body: bytes, endpoint: str, models: Mapping[str, ModelConfig], allows: Allows, max_bytes: int
) -> Request:
    """One item's body → its canonical request; a GatewayError (400, 404, 413) says why it cannot run."""
    if len(body) > max_bytes:
        raise PayloadTooLargeError(f"The request body is {len(body)} bytes; the limit for a batch item is {max_bytes}.")
    api = check_endpoint(endpoint)
    chat: ChatCompletionRequest | None = None
    embeddings: EmbeddingsRequest | None = None
    if api == "chat":
        chat = chat_request(body)
        if chat.stream:  # a batch answers whole: the stream flag is dropped rather than refused
            chat = msgspec.structs.replace(chat, stream=False, stream_options=None)
        model = chat.model
    else:
        embeddings = embeddings_request(body)
        model = embeddings.model
    target = models.get(model)
    if target is None or not allows(model, target.name):
        raise NotFoundError(f"The model `{model}` does not exist or you do not have access to it.", param="model")
    if (target.kind == "embeddings") != (api == "embeddings"):
        raise InvalidRequestError(f"The model `{model}` does not serve {endpoint}.", param="model")
    return Request(model=model, canonical=target.name, chat=chat, embeddings=embeddings)


def _refused(number: int, code: str, message: str, status: int = 400) -> ErrorInfo:
    return ErrorInfo(status=status, type="invalid_request_error", code=code, message=f"Line {number}: {message}")


def read_lines(
    data: bytes,
    endpoint: str,
    models: Mapping[str, ModelConfig],
    allows: Allows,
    *,
    max_item_bytes: int,
    max_items: int,
) -> list[Line]:
    """Every non-blank line of a JSONL file, in order; InvalidRequestError when the file as a whole is unusable
    (not UTF-8 text, no request at all, more requests than a job may have)."""
    check_endpoint(endpoint)
    try:
        text_lines = data.decode("utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise InvalidRequestError("The input file is not UTF-8 text (JSONL expected).", param="input_file_id") from exc
    lines: list[Line] = []
    seen: set[str] = set()
    for number, text in enumerate(text_lines, start=1):
        if not text.strip():
            continue
        if len(lines) >= max_items:
            raise InvalidRequestError(
                f"The input file has more than {max_items} requests, the most one batch may have.",
                param="input_file_id",
            )
        lines.append(_line(len(lines), number, text.encode(), endpoint, models, allows, max_item_bytes, seen))
    if not lines:
        raise InvalidRequestError("The input file has no requests.", param="input_file_id")
    return lines


def _line(
    index: int,
    number: int,
    raw: bytes,
    endpoint: str,
    models: Mapping[str, ModelConfig],
    allows: Allows,
    max_bytes: int,
    seen: set[str],
) -> Line:
    try:
        obj = _LINE.decode(raw)
    except msgspec.DecodeError as exc:
        detail = str(exc).split("\n")[0][:200].rstrip(".")
        return Line(index, number, None, error=_refused(number, "invalid_json_line", f"not a JSON object ({detail})."))
    except RecursionError:
        return Line(index, number, None, error=_refused(number, "invalid_json_line", "JSON nested too deeply."))
    custom_id = obj.custom_id
    if not custom_id:
        return Line(index, number, None, error=_refused(number, "missing_custom_id", "`custom_id` is required."))
    if len(custom_id) > MAX_ITEM_ID:
        message = f"`custom_id` has {len(custom_id)} characters; at most {MAX_ITEM_ID}."
        return Line(index, number, None, error=_refused(number, "invalid_custom_id", message))
    if custom_id in seen:
        repeated = _refused(number, "duplicate_custom_id", f"`custom_id` {custom_id!r} repeats.")
        return Line(index, number, custom_id, error=repeated)
    seen.add(custom_id)
    if obj.method is not None and obj.method.upper() != "POST":
        return Line(index, number, custom_id, error=_refused(number, "invalid_method", "`method` must be POST."))
    if obj.url is not None and obj.url != endpoint:
        message = f"`url` {obj.url[:100]!r} is not the batch's endpoint {endpoint}."
        return Line(index, number, custom_id, error=_refused(number, "mismatched_url", message))
    body = bytes(obj.body)
    if not body or body == b"null":
        return Line(index, number, custom_id, error=_refused(number, "missing_body", "`body` is required."))
    try:
        request = parse_body(body, endpoint, models, allows, max_bytes)
    except GatewayError as exc:
        info = exc.info()
        code = "request_too_large" if isinstance(exc, PayloadTooLargeError) else info.code
        return Line(index, number, custom_id, body=body, error=_refused(number, code, info.message, info.status))
    return Line(index, number, custom_id, body=body, request=request)
