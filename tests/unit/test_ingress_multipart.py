"""Uploads as the OpenAI SDK sends them (httpx multipart): fields and the file part are found in the spooled
body; a body past the limit, or not multipart, is refused."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from services.ingress.multipart import read_upload
from shared.errors import InvalidRequestError, PayloadTooLargeError

CONTENT = b'{"custom_id": "a"}\n' * 1000 + b"--not-a-boundary\r\n\r\n"


def multipart(**files: tuple[str, bytes]) -> tuple[bytes, str]:
    request = httpx.Request("POST", "http://x/v1/files", files=files, data={"purpose": "batch"})
    return request.read(), request.headers["content-type"]


async def chunks(data: bytes, size: int = 4096) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


async def test_the_file_and_the_fields_of_an_sdk_upload() -> None:
    body, kind = multipart(file=("in put.jsonl", CONTENT))
    upload = await read_upload(chunks(body), kind, 10 * len(body))
    try:
        assert upload.fields == {"purpose": "batch"}
        assert upload.filename == "in put.jsonl" and upload.size == len(CONTENT)
        assert upload.file is not None and upload.file.read() == CONTENT
    finally:
        upload.close()


async def test_refusals() -> None:
    body, kind = multipart(file=("a.jsonl", CONTENT))
    with pytest.raises(PayloadTooLargeError):
        await read_upload(chunks(body), kind, len(body) - 1)
    with pytest.raises(InvalidRequestError, match="multipart"):
        await read_upload(chunks(body), "application/json", 10 * len(body))
    with pytest.raises(InvalidRequestError, match="closing boundary"):
        await read_upload(chunks(body[: len(body) // 2]), kind, 10 * len(body))
    body, kind = multipart(note=("n.txt", b"x"))  # no `file` part
    upload = await read_upload(chunks(body), kind, 10_000)
    assert upload.file is None and upload.fields == {"purpose": "batch", "note": "x"}
    upload.close()
