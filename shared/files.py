"""Batch files (OpenAI's `/v1/files`, purpose `batch`, and the output and error files of jobs): a JetStream
object store, one object per file, its record (owner key, name, purpose, size, time) in the object's
description. Ingress writes uploads and reads contents; the batch service reads inputs, writes outputs and
deletes files.
"""

from __future__ import annotations

import io
import logging
import secrets
from typing import BinaryIO

import msgspec
from nats.js import JetStreamContext
from nats.js.api import ObjectMeta, ObjectStoreConfig, StorageType
from nats.js.errors import BadRequestError, BucketNotFoundError, NotFoundError, ObjectNotFoundError
from nats.js.object_store import ObjectStore

log = logging.getLogger("gatehouse.files")


def new_file_id() -> str:
    """`file-` and 24 hex digits, as OpenAI's file ids look."""
    return f"file-{secrets.token_hex(12)}"


class StoredFile(msgspec.Struct, frozen=True, kw_only=True):
    """One file's record."""

    id: str
    bytes: int = 0
    created_at: float
    filename: str
    purpose: str  # batch (an upload) | batch_output (a job's output or error file)
    key_id: str  # the key that owns it: only that key reads or deletes it

    def openai(self, retention_s: float) -> dict[str, object]:
        """OpenAI's file object."""
        return {
            "id": self.id,
            "object": "file",
            "bytes": self.bytes,
            "created_at": int(self.created_at),
            "expires_at": int(self.created_at + retention_s),
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "status_details": None,
        }


_RECORD = msgspec.json.Decoder(StoredFile)


class FileStore:
    def __init__(self, js: JetStreamContext, bucket: str, retention_s: float) -> None:
        self._js = js
        self._bucket = bucket
        self.retention_s = retention_s
        self._store: ObjectStore | None = None

    async def store(self) -> ObjectStore:
        """The object store, created on first use if missing (a different existing config is kept)."""
        if self._store is None:
            try:
                self._store = await self._js.object_store(self._bucket)
            except BucketNotFoundError:
                try:
                    self._store = await self._js.create_object_store(
                        self._bucket, ObjectStoreConfig(ttl=self.retention_s, storage=StorageType.FILE)
                    )
                except BadRequestError:  # created by another process meanwhile
                    self._store = await self._js.object_store(self._bucket)
        return self._store

    async def put(self, record: StoredFile, data: bytes | BinaryIO) -> None:
        """Store a file's content under its id (`record.bytes` must be its size: clients are told it)."""
        store = await self.store()
        body: BinaryIO = io.BytesIO(data) if isinstance(data, bytes) else data
        meta = ObjectMeta(name=record.id, description=msgspec.json.encode(record).decode())
        await store.put(record.id, body, meta=meta)  # type: ignore[arg-type]

    async def info(self, file_id: str) -> StoredFile | None:
        store = await self.store()
        try:
            info = await store.get_info(file_id)
        except ObjectNotFoundError:
            return None
        try:
            return _RECORD.decode(info.description or "")
        except msgspec.DecodeError:
            log.error("file %s has an unreadable record", file_id)
            return None

    async def read(self, file_id: str) -> bytes:
        store = await self.store()
        result = await store.get(file_id)
        return bytes(result.data or b"")

    async def list(self, key_id: str) -> list[StoredFile]:
        """The files of one key, newest first."""
        store = await self.store()
        try:
            infos = await store.list(ignore_deletes=True)
        except NotFoundError:
            return []
        out: list[StoredFile] = []
        for info in infos:
            if info.deleted:
                continue
            try:
                record = _RECORD.decode(info.description or "")
            except msgspec.DecodeError:
                continue
            if record.key_id == key_id:
                out.append(record)
        out.sort(key=lambda f: (f.created_at, f.id), reverse=True)
        return out

    async def delete(self, file_id: str) -> bool:
        store = await self.store()
        try:
            await store.delete(file_id)
        except ObjectNotFoundError:
            return False
        return True
