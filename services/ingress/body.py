"""Reading a request body within the server's limit (413 past it, never buffering more than the limit)."""

from __future__ import annotations

from starlette.requests import ClientDisconnect, Request

from shared.errors import InvalidRequestError, PayloadTooLargeError


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLargeError(f"The request body is {declared} bytes; the limit is {limit} bytes.")
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise PayloadTooLargeError(f"The request body exceeds the limit of {limit} bytes.")
            chunks.append(chunk)
    except ClientDisconnect as exc:
        raise InvalidRequestError("The client closed the connection before sending the whole body.") from exc
    return b"".join(chunks)
