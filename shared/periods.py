"""Budget periods and quota windows (pure): which period a moment falls in, and when it ends.

Budget periods are calendar-aligned in the org's time zone (a day starts at local midnight, a week on
Monday, a month on the 1st); `total` never ends. Quota windows are fixed UTC minutes.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from shared.governance import Period

MINUTE = 60


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name or "UTC")
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


def period_key(period: Period, now: float, tz: str = "UTC") -> str:
    """A short token naming the period `now` is in (it names a NATS subject): d20261202, w2026-49, m202612."""
    if period == "total":
        return "total"
    # periods begin on a minute in every time zone: one computation per minute (the hot path asks per request)
    return _period_key(period, int(now // MINUTE), tz)


@lru_cache(maxsize=256)
def _period_key(period: Period, minute: int, tz: str) -> str:
    local = datetime.fromtimestamp(minute * MINUTE, zone(tz))
    if period == "daily":
        return local.strftime("d%Y%m%d")
    if period == "weekly":
        year, week, _ = local.isocalendar()
        return f"w{year}-{week:02d}"
    return local.strftime("m%Y%m")


def period_end(period: Period, now: float, tz: str = "UTC") -> float | None:
    """Unix time at which the period `now` is in ends (None for `total`)."""
    if period == "total":
        return None
    local = datetime.fromtimestamp(now, zone(tz))
    start = local.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "daily":
        end = start + timedelta(days=1)
    elif period == "weekly":
        end = start + timedelta(days=7 - start.weekday())
    else:
        end = (start.replace(day=1) + timedelta(days=32)).replace(day=1)
    # the wall-clock midnight in the zone (a DST change in between is absorbed by re-localising)
    return end.replace(tzinfo=None).replace(tzinfo=local.tzinfo).timestamp()


def window(now: float) -> int:
    """The quota window (UTC minute) `now` is in."""
    return int(now // MINUTE)


def window_reset(now: float) -> float:
    """Seconds until the current quota window ends."""
    return MINUTE - (now % MINUTE)


def parse_instant(text: str) -> float:
    """A point in time given as unix seconds or an ISO 8601 date or time (UTC unless it says) → unix seconds;
    ValueError for anything else."""
    try:
        return float(text)
    except ValueError:
        pass
    parsed = datetime.fromisoformat(text)
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()
