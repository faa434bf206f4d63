"""Deployment health shared by every router replica through a NATS KV bucket (`Subjects.routing_bucket`).

A replica that opens a breaker, learns a 429's Retry-After, claims a probe or sees a probe succeed writes
the deployment's `DeploymentHealth`; every replica watches the bucket and applies what others wrote, so
all stop sending to a failed deployment as soon as the watch delivers (milliseconds on one server).
A probe is claimed with compare-and-set on the key's revision: one replica probes, the others wait.
While KV is unreachable each replica goes on with its own breakers (and probes on its own).
"""

from __future__ import annotations

import asyncio
import logging
import re

import msgspec
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import BucketNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue

from services.router.health import HealthBoard
from shared.schemas.routing import DeploymentHealth
from shared.tasks import cancel_and_wait

log = logging.getLogger("gatehouse.router.health")

RETRY_S = 1.0
WRITE_TIMEOUT_S = 2.0
_ENC = msgspec.json.Encoder()
_DEC = msgspec.json.Decoder(DeploymentHealth)
_UNSAFE = re.compile(r"[^-/_a-zA-Z0-9]")


def health_key(deployment: str) -> str:
    """A KV key for a deployment id (ids may hold ':', '.', spaces…: escaped as =xx)."""
    return "d." + _UNSAFE.sub(lambda m: "".join(f"={b:02x}" for b in m.group().encode()), deployment)


class SharedHealth:
    def __init__(self, js: JetStreamContext, bucket: str, board: HealthBoard) -> None:
        self._js = js
        self._bucket = bucket
        self._board = board
        self._kv: KeyValue | None = None
        self._revisions: dict[str, int] = {}
        self._task: asyncio.Task[None] | None = None
        self._writes: set[asyncio.Task[None]] = set()
        self.synced = asyncio.Event()

    async def _bucket_kv(self) -> KeyValue:
        if self._kv is None:
            try:
                self._kv = await self._js.key_value(self._bucket)
            except BucketNotFoundError:
                self._kv = await self._js.create_key_value(
                    KeyValueConfig(bucket=self._bucket, history=1, storage=StorageType.FILE)
                )
        return self._kv

    def start(self) -> None:
        self._board.share = self.publish
        self._task = asyncio.create_task(self._watch(), name="routing-health-watch")

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)
        if self._writes:
            await asyncio.wait(set(self._writes), timeout=WRITE_TIMEOUT_S)

    async def _watch(self) -> None:
        while True:
            try:
                kv = await self._bucket_kv()
                watcher = await kv.watchall()
                async for entry in watcher:
                    if entry is None:
                        self.synced.set()
                        continue
                    if entry.operation in (KV_DEL, KV_PURGE) or not entry.value:
                        continue
                    self._revisions[entry.key] = entry.revision or 0
                    try:
                        health = _DEC.decode(entry.value)
                    except msgspec.MsgspecError:
                        log.error("routing health record %s is unreadable; ignored", entry.key)
                        continue
                    self._board.apply(health)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._kv = None
                log.warning("routing health watch lost (%s); breakers are per replica until it is back", exc)
                await asyncio.sleep(RETRY_S)

    def publish(self, health: DeploymentHealth) -> None:
        """Write a transition in the background (the request that learnt it does not wait)."""
        task = asyncio.create_task(self._put(health))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _put(self, health: DeploymentHealth) -> None:
        key = health_key(health.deployment)
        try:
            kv = await self._bucket_kv()
            async with asyncio.timeout(WRITE_TIMEOUT_S):
                self._revisions[key] = await kv.put(key, _ENC.encode(health))
        except Exception as exc:
            log.warning("could not share the health of %s (%s)", health.deployment, type(exc).__name__)

    async def claim(self, health: DeploymentHealth) -> bool:
        """Compare-and-set the probe claim; False if another replica changed the deployment's state first."""
        key = health_key(health.deployment)
        try:
            kv = await self._bucket_kv()
            async with asyncio.timeout(WRITE_TIMEOUT_S):
                revision = self._revisions.get(key)
                if revision is None:
                    self._revisions[key] = await kv.create(key, _ENC.encode(health))
                else:
                    self._revisions[key] = await kv.update(key, _ENC.encode(health), last=revision)
        except KeyWrongLastSequenceError:
            return False
        except Exception as exc:
            # KV unreachable: probe from this replica alone rather than never again
            log.warning("could not claim the probe of %s (%s); probing locally", health.deployment, exc)
        return True
