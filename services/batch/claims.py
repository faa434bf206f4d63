"""In-flight claims on batch items: at most one copy of an item is with the pipeline at a time, on every batch
replica together.

Two copies of one item can be delivered at once: JetStream redelivers an item whose ack_wait passed while its
first copy is still with the provider, a replica dies or restarts mid-item, and an item can be queued under two
message ids (a producer of an earlier release, a file job queued again across an upgrade: docs/batch.md). Before a
copy runs, it creates the item's key `<job>.<item token>` in a KV bucket with compare-and-set (`create`: only if
no live claim exists) and a per-message TTL, so nats-server itself removes the claim of a holder that stopped
renewing it (a crashed replica) and the item is not blocked for ever. A copy that finds a live claim does not
run: it waits (nak with a delay) until the result is stored, then is answered from it. The holder renews its
claim (compare-and-set on the revision it wrote) with the keepalives it sends JetStream while the provider call
runs, and deletes it (compare-and-set) only when it lets the item go without a result (a retry), so the next
copy need not wait out the TTL. Per item that is one KV write, two for an item that is tried again, plus one per
third of the TTL that a provider call lasts.

A holder cut off from NATS for longer than the TTL loses its claim (its renewal fails compare-and-set) and
another copy may start meanwhile; the results are stored create-only (services/batch/store.py), so the first
result stored is the item's one result either way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from nats.js import JetStreamContext
from nats.js.api import Header, KeyValueConfig, StorageType
from nats.js.errors import APIError, BadRequestError, BucketNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

# nats-server's answers to a publish whose expected last subject sequence does not match
WRONG_LAST_SEQUENCE = frozenset({10071, 10164})
# the bucket's max_age: the delete markers of released claims go after it; live claims carry their own TTL
# (at most this)
BUCKET_MAX_AGE_S = 86400.0


class ClaimsUnavailable(Exception):
    """The claims bucket cannot hold claims that expire."""


@dataclass(slots=True)
class Held:
    """A claim this replica holds: its key and the revision it last wrote (renewals move it on)."""

    key: str
    revision: int
    # no longer this replica's: a renewal found another holder's revision, or it was released
    lost: bool = False


class Claims:
    """The claims bucket (`<base>_BATCH_CLAIMS`) of in-flight items."""

    def __init__(self, js: JetStreamContext, bucket: str, ttl_s: float, timeout_s: float) -> None:
        self._js = js
        self._bucket = bucket
        # nats-server takes whole seconds; a claim lives at least as long as a JetStream ack_wait
        self.ttl_s = float(min(max(1, math.ceil(ttl_s)), BUCKET_MAX_AGE_S))
        self._timeout = timeout_s
        self._kv: KeyValue | None = None

    async def ensure(self) -> KeyValue:
        """The bucket, made if missing (one made elsewhere must allow per-message TTLs, or no claim could expire)."""
        if self._kv is None:
            try:
                self._kv = await self._js.key_value(self._bucket)
                info = await self._js.stream_info(f"KV_{self._bucket}")
                if not info.config.allow_msg_ttl:
                    self._kv = None
                    raise ClaimsUnavailable(
                        f"KV bucket {self._bucket} does not allow per-message TTLs (allow_msg_ttl, nats-server"
                        " >= 2.11): delete it and let the batch service make it"
                    )
            except BucketNotFoundError:
                config = KeyValueConfig(
                    bucket=self._bucket, history=1, ttl=BUCKET_MAX_AGE_S, storage=StorageType.FILE
                )  # per-message TTLs are allowed on every bucket nats-py makes
                try:
                    self._kv = await self._js.create_key_value(config)
                except BadRequestError:  # another replica created it meanwhile
                    self._kv = await self._js.key_value(self._bucket)
        return self._kv

    async def take(self, job_id: str, token: str, holder: str) -> Held | None:
        """Claim the item (`holder` says who, for an operator reading the bucket); None: a live claim of another
        copy exists. Raises when the bucket cannot be reached (the item must then not run)."""
        kv = await self.ensure()
        key = claim_key(job_id, token)
        try:
            revision = await kv.create(key, holder.encode(), msg_ttl=self.ttl_s)
        except KeyWrongLastSequenceError:
            return None
        return Held(key, revision)

    async def renew(self, held: Held, holder: str) -> bool:
        """Write the claim again with a fresh TTL if it is still this replica's revision; False: it is not (it
        expired and another copy claimed the item), and it is marked lost."""
        if held.lost:
            return False
        try:
            ack = await self._js.publish(
                f"$KV.{self._bucket}.{held.key}",
                holder.encode(),
                timeout=self._timeout,
                headers={Header.EXPECTED_LAST_SUBJECT_SEQUENCE: str(held.revision)},
                msg_ttl=self.ttl_s,
            )
        except APIError as exc:
            if exc.err_code not in WRONG_LAST_SEQUENCE:
                raise
            held.lost = True
            return False
        held.revision = ack.seq
        return True

    async def release(self, held: Held) -> None:
        """Let the item go (it runs again later): the claim is deleted if it is still this replica's, so the
        next copy may claim it at once. Its delete marker goes with the bucket's max_age."""
        if held.lost:
            return
        kv = await self.ensure()
        try:
            await kv.delete(held.key, last=held.revision)
        except KeyWrongLastSequenceError:
            pass  # another copy's claim by now: left alone
        held.lost = True


def claim_key(job_id: str, token: str) -> str:
    """`<job id>.<item token>`: job ids are `[A-Za-z0-9_-]` and tokens hex, both valid in a KV key."""
    return f"{job_id}.{token}"
