"""Webhook signatures: HMAC-SHA256 over `<id length>:<id>.<timestamp>.<body>`, and the check a receiver runs (pure).

Every signed delivery carries

    webhook-id: budget_alert.alert.team.ml.2026-12.80.slack      (the same on every attempt of a delivery)
    x-gatehouse-timestamp: 1767225600                            (unix seconds when this attempt was sent)
    x-gatehouse-signature: v2=<hex HMAC-SHA256(secret, len(id) + ":" + id + "." + timestamp + "." + body)> v1=<hex …>

A receiver de-duplicates on `webhook-id`, so the id is signed with the body: a delivery captured and sent again
within the tolerance under another id (to get past the de-duplication) fails the check. The id's length (in UTF-8
bytes, decimal) comes first because ids hold dots: `<id>.<timestamp>.<body>` alone reads the same for another id,
timestamp and body (`d.1000000` sent at 1000007 with `{}`, and `d` sent at 1000000 with `1000007.{}`), so one
signature would hold for both. With the length, the id ends where the length says, the timestamp is the digits up
to the next dot, and the body is the rest: one reading only. `verify` recomputes the `v2=` HMAC over the length of
the id header, a colon, the id, a dot, the timestamp header, a dot and the raw body bytes, compares in constant
time, and refuses timestamps too far from its clock (a replayed old delivery).

`v1=` (HMAC over `<timestamp>.<body>`, without the id) is deprecated: it is still sent unless a webhook's
`signatures` leave it out (`signatures: [v2]`), for receivers written against it, and `verify` never accepts
it: a v1 signature stays valid under any id, so accepting it would let a replay strip the `v2=` value and pass.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Mapping

ID_HEADER = "webhook-id"
SIGNATURE_HEADER = "x-gatehouse-signature"
TIMESTAMP_HEADER = "x-gatehouse-timestamp"
DEFAULT_TOLERANCE_S = 300
SCHEME = "v2="
# a delivery id is `<event type>.<source id>.<webhook>`; far longer is not one of ours
MAX_ID_CHARS = 4096


def _hmac(secret: str | bytes, message: bytes) -> str:
    key = secret.encode() if isinstance(secret, str) else secret
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def _id_bytes(delivery_id: str) -> bytes:
    # surrogatepass: a header decoded byte-preservingly may hold lone surrogates; they must not raise
    return delivery_id.encode("utf-8", "surrogatepass")


def signature(secret: str | bytes, delivery_id: str, timestamp: int, body: bytes) -> str:
    """`v2=<hex>` for `body` of delivery `delivery_id` sent at `timestamp`."""
    id_bytes = _id_bytes(delivery_id)
    signed = b"%d:%b.%d.%b" % (len(id_bytes), id_bytes, timestamp, body)
    return SCHEME + _hmac(secret, signed)


def signature_v1(secret: str | bytes, timestamp: int, body: bytes) -> str:
    """`v1=<hex>`: the deprecated scheme, without the id (sent alongside v2 for old receivers; never verified)."""
    return "v1=" + _hmac(secret, str(timestamp).encode() + b"." + body)


def signed_headers(
    secret: str | bytes, delivery_id: str, body: bytes, now: float | None = None, *, v1: bool = True
) -> dict[str, str]:
    """The id, timestamp and signature headers of one attempt of a delivery (`v2=`, and `v1=` unless not `v1`)."""
    timestamp = int(time.time() if now is None else now)
    signatures = signature(secret, delivery_id, timestamp, body)
    if v1:
        signatures += " " + signature_v1(secret, timestamp, body)
    return {ID_HEADER: delivery_id, TIMESTAMP_HEADER: str(timestamp), SIGNATURE_HEADER: signatures}


def verify(
    secret: str | bytes,
    headers: Mapping[str, str],
    body: bytes,
    *,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
    now: float | None = None,
) -> bool:
    """True when `headers` carry a valid `v2=` signature of `body` and of its `webhook-id`, made within
    `tolerance_s` of `now`.

    `headers` is looked up with lower-case names (a dict of the request's headers, or any case-insensitive
    mapping such as Starlette's or Flask's)."""
    delivery_id = headers.get(ID_HEADER, "")
    raw_ts = headers.get(TIMESTAMP_HEADER, "")
    given = headers.get(SIGNATURE_HEADER, "")
    if not isinstance(delivery_id, str) or not isinstance(raw_ts, str) or not isinstance(given, str):
        return False
    if not delivery_id or len(delivery_id) > MAX_ID_CHARS:
        return False
    # `isdigit` alone accepts non-ASCII digits such as "²" that `int` refuses: a malformed header is a False
    if not (raw_ts.isascii() and raw_ts.isdigit()) or not given or len(raw_ts) > 20:
        return False
    timestamp = int(raw_ts)
    if abs((time.time() if now is None else now) - timestamp) > tolerance_s:
        return False
    expected = signature(secret, delivery_id, timestamp, body).encode()
    # several signatures (e.g. during a secret rotation, and the v1 one) may be sent space-separated: any v2 one
    # may match; compared as bytes (a non-ASCII str makes `compare_digest` raise) after encoding, so any text
    # compares safely
    return any(
        hmac.compare_digest(expected, part.encode("utf-8", "surrogatepass"))
        for part in given.split()
        if part.startswith(SCHEME)
    )
