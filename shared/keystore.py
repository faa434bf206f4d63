"""The directory's I/O: a NATS KV bucket of orgs, teams, projects, users and virtual keys, mirrored into
memory by a watch, and written by the admin API.

Authentication reads only the mirror, so it never waits on the bus and keeps working while KV is
unreachable; a change (a revoked key) reaches every replica as soon as the watch delivers it. If the
watch breaks, it is started again (and replays the bucket) until it holds.
"""

from __future__ import annotations

import asyncio
import logging

import msgspec
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, KeyWrongLastSequenceError, NotFoundError
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue

from shared.directory import Directory
from shared.governance import KINDS, Entity, decode_entity, encode_entity, kv_key
from shared.tasks import cancel_and_wait

log = logging.getLogger("gatehouse.ingress.keystore")

RETRY_S = 1.0


class ConflictError(Exception):
    """The record changed since it was read (another admin wrote it first)."""


class KeyStore:
    def __init__(self, js: JetStreamContext, bucket: str, directory: Directory) -> None:
        self._js = js
        self._bucket = bucket
        self.directory = directory
        self._kv: KeyValue | None = None
        self._seen = False
        self._task: asyncio.Task[None] | None = None
        self.synced = asyncio.Event()  # the mirror has replayed the bucket once

    async def bucket(self) -> KeyValue:
        """The bucket, created on first use if missing. Once it has been seen, a bucket that is gone is
        an outage, not an empty directory: it is not created again here (the mirror keeps serving)."""
        if self._kv is None:
            try:
                self._kv = await self._js.key_value(self._bucket)
            except BucketNotFoundError:
                if self._seen:
                    raise
                self._kv = await self._js.create_key_value(
                    KeyValueConfig(bucket=self._bucket, history=5, storage=StorageType.FILE)
                )
            self._seen = True
        return self._kv

    def start(self) -> None:
        self._task = asyncio.create_task(self._mirror(), name="keystore-watch")

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)

    async def _mirror(self) -> None:
        while True:
            try:
                kv = await self.bucket()
                watcher = await kv.watchall()
                seen: set[str] = set()
                replaying = True
                async for entry in watcher:
                    if entry is None:  # the bucket's current state is in: drop what was deleted meanwhile
                        self._forget_missing(seen)
                        replaying = False
                        self.synced.set()
                        continue
                    if replaying:
                        seen.add(entry.key)
                    self._apply(entry.key, entry.value, entry.operation)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._kv = None
                log.warning("directory watch lost (%s); serving from memory and retrying", type(exc).__name__)
                await asyncio.sleep(RETRY_S)

    def _apply(self, key: str, value: bytes | None, operation: str | None) -> None:
        kind, _, entity_id = key.partition(".")
        if kind not in KINDS:
            return
        if operation in (KV_DEL, KV_PURGE) or not value:
            self.directory.delete(kind, entity_id)
            return
        try:
            self.directory.put(decode_entity(kind, value))
        except msgspec.MsgspecError:
            log.error("directory record %s is unreadable; ignored", key)

    def _forget_missing(self, seen: set[str]) -> None:
        for kind, table in self.directory._tables().items():
            for entity_id in list(table):
                if kv_key(kind, entity_id) not in seen:
                    self.directory.delete(kind, entity_id)

    # ---- writes (admin API) -------------------------------------------------------------------
    async def get(self, kind: str, entity_id: str) -> tuple[Entity, int] | None:
        kv = await self.bucket()
        try:
            entry = await kv.get(kv_key(kind, entity_id))
        except (KeyNotFoundError, NotFoundError):
            return None
        if not entry.value:
            return None
        return decode_entity(kind, entry.value), entry.revision or 0

    async def create(self, kind: str, entity: Entity) -> int:
        kv = await self.bucket()
        try:
            return await kv.create(kv_key(kind, entity.id), encode_entity(entity))
        except KeyWrongLastSequenceError as exc:
            raise ConflictError(f"{kind} {entity.id!r} exists") from exc

    async def update(self, kind: str, entity: Entity, revision: int) -> int:
        kv = await self.bucket()
        try:
            return await kv.update(kv_key(kind, entity.id), encode_entity(entity), last=revision)
        except KeyWrongLastSequenceError as exc:
            raise ConflictError(f"{kind} {entity.id!r} changed meanwhile; read it again") from exc

    async def delete(self, kind: str, entity_id: str) -> None:
        kv = await self.bucket()
        await kv.delete(kv_key(kind, entity_id))
