"""`multipart/form-data` uploads (what `POST /v1/files` receives from the OpenAI SDKs), parsed from a spooled
temporary file so a large file never sits in memory: the body is written to disk as it arrives (bounded),
then its parts are found by their boundary, and the file part is read back as a slice of the spool.
"""

from __future__ import annotations

import io
import mmap
import re
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import BinaryIO

from shared.errors import InvalidRequestError, PayloadTooLargeError

MAX_FIELD_BYTES = 64 * 1024
_BOUNDARY = re.compile(r'boundary="?([^";]+)"?', re.IGNORECASE)
_DISPOSITION = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"|(\w+)=([^;\s]+)')


class _Slice(io.RawIOBase):
    """A read-only file over part of a memory map (what the object store reads the upload from)."""

    def __init__(self, view: mmap.mmap, start: int, end: int) -> None:
        self._view = view
        self._pos = start
        self._end = end

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        n = min(len(buffer), self._end - self._pos)
        if n <= 0:
            return 0
        buffer[:n] = self._view[self._pos : self._pos + n]
        self._pos += n
        return n


@dataclass
class Upload:
    """The form's text fields, and its one file (a readable view of the spooled body)."""

    fields: dict[str, str] = field(default_factory=dict)
    filename: str = ""
    size: int = 0
    file: BinaryIO | None = None
    _spool: BinaryIO | None = None
    _map: mmap.mmap | None = None

    def close(self) -> None:
        if self._map is not None:
            self._map.close()
        if self._spool is not None:
            self._spool.close()


def boundary_of(content_type: str) -> bytes:
    if not content_type.lower().startswith("multipart/form-data"):
        raise InvalidRequestError("Upload the file as multipart/form-data (fields `file` and `purpose`).")
    match = _BOUNDARY.search(content_type)
    if not match or len(match.group(1)) > 200:
        raise InvalidRequestError("The multipart body names no boundary.")
    return match.group(1).encode("latin-1")


async def read_upload(chunks: AsyncIterator[bytes], content_type: str, limit: int) -> Upload:
    """Spool the body (refused past `limit` bytes) and find its fields and its `file` part."""
    boundary = boundary_of(content_type)
    spool: BinaryIO = tempfile.TemporaryFile()  # closed by Upload.close
    upload = Upload(_spool=spool)
    size = 0
    try:
        async for chunk in chunks:
            size += len(chunk)
            if size > limit:
                raise PayloadTooLargeError(f"The upload exceeds the limit of {limit} bytes.")
            spool.write(chunk)
        spool.flush()
        if size == 0:
            raise InvalidRequestError("The upload is empty.")
        view = mmap.mmap(spool.fileno(), 0, access=mmap.ACCESS_READ)
        upload._map = view
        _parse(view, boundary, upload)
    except BaseException:
        upload.close()
        raise
    return upload


def _parse(view: mmap.mmap, boundary: bytes, upload: Upload) -> None:
    delimiter = b"--" + boundary
    pos = view.find(delimiter)
    if pos < 0:
        raise InvalidRequestError("The multipart body does not contain its boundary.")
    while True:
        pos += len(delimiter)
        if view[pos : pos + 2] == b"--":
            return  # the closing delimiter
        if view[pos : pos + 2] != b"\r\n":
            raise InvalidRequestError("Malformed multipart body.")
        head_end = view.find(b"\r\n\r\n", pos + 2)
        if head_end < 0 or head_end - pos > MAX_FIELD_BYTES:
            raise InvalidRequestError("Malformed multipart part headers.")
        headers = view[pos + 2 : head_end].decode("utf-8", "replace")
        start = head_end + 4
        end = view.find(b"\r\n" + delimiter, start)
        if end < 0:
            raise InvalidRequestError("The multipart body ends before its closing boundary.")
        name, filename = _disposition(headers)
        if filename is not None and name == "file":
            upload.filename = filename[:255] or "upload.jsonl"
            upload.size = end - start
            upload.file = io.BufferedReader(_Slice(view, start, end))
        elif name:
            if end - start > MAX_FIELD_BYTES:
                raise InvalidRequestError(f"The form field {name[:40]!r} is too large.")
            upload.fields[name] = view[start:end].decode("utf-8", "replace")
        pos = end + 2


def _disposition(headers: str) -> tuple[str, str | None]:
    for line in headers.split("\r\n"):
        key, _, value = line.partition(":")
        if key.strip().lower() != "content-disposition":
            continue
        params: dict[str, str] = {}
        for quoted_key, quoted, bare_key, bare in _DISPOSITION.findall(value):
            params[(quoted_key or bare_key).lower()] = quoted.replace('\\"', '"') if quoted_key else bare
        return params.get("name", ""), params.get("filename")
    return "", None
