"""Webhook signatures: HMAC-SHA256 over `<timestamp>.<body>`, and the check a receiver runs (pure).

Every signed delivery carries

    x-gatehouse-timestamp: 1767225600                 (unix seconds when this attempt was sent)
    x-gatehouse-signature: v1=<hex HMAC-SHA256(secret, b"1767225600." + body)>

A receiver recomputes the HMAC over the timestamp header, a dot and the raw body bytes, compares in constant
time, and refuses timestamps too far from its clock (a replayed old delivery): `verify` does all three.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Mapping

SIGNATURE_HEADER = "x-gatehouse-signature"
TIMESTAMP_HEADER = "x-gatehouse-timestamp"
DEFAULT_TOLERANCE_S = 300


def signature(secret: str | bytes, timestamp: int, body: bytes) -> str:
    """`v1=<hex>` for `body` sent at `timestamp`."""
    key = secret.encode() if isinstance(secret, str) else secret
    digest = hmac.new(key, str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"v1={digest}"


def signed_headers(secret: str | bytes, body: bytes, now: float | None = None) -> dict[str, str]:
    timestamp = int(time.time() if now is None else now)
    return {TIMESTAMP_HEADER: str(timestamp), SIGNATURE_HEADER: signature(secret, timestamp, body)}


def verify(
    secret: str | bytes,
    headers: Mapping[str, str],
    body: bytes,
    *,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
    now: float | None = None,
) -> bool:
    """True when `headers` carry a valid signature of `body` made within `tolerance_s` of `now`.

    `headers` is looked up with lower-case names (a dict of the request's headers, or any case-insensitive
    mapping such as Starlette's or Flask's)."""
    raw_ts = headers.get(TIMESTAMP_HEADER, "")
    given = headers.get(SIGNATURE_HEADER, "")
    if not isinstance(raw_ts, str) or not isinstance(given, str):
        return False
    # `isdigit` alone accepts non-ASCII digits such as "²" that `int` refuses: a malformed header is a False
    if not (raw_ts.isascii() and raw_ts.isdigit()) or not given or len(raw_ts) > 20:
        return False
    timestamp = int(raw_ts)
    if abs((time.time() if now is None else now) - timestamp) > tolerance_s:
        return False
    expected = signature(secret, timestamp, body).encode()
    # several signatures (e.g. during a secret rotation) may be sent space-separated: any may match; compared
    # as bytes (a non-ASCII str makes `compare_digest` raise) after encoding, so any text compares safely
    return any(hmac.compare_digest(expected, part.encode("utf-8", "surrogatepass")) for part in given.split())
