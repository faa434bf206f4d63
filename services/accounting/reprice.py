"""Re-pricing stored requests (pure): which rows change, the statements that change them, and the corrections
that keep the rollups equal to the rows.

`gatehouse reprice --from --to` prices each stored row's usage again with the prices the accounting service
has now (the config's `deployments[].price` or `models[].price`, else genai-prices at the row's own time)
and writes `cost_usd` and `price_version` of the rows whose price changed, with one `ALTER TABLE … UPDATE`
per chunk (a mutation: it rewrites nothing else, and materialized views do not see it). The per-minute and
per-hour rollups are then brought back in line with the rows by inserting the difference of each of their
buckets in the range (SummingMergeTree adds it up). Rows priced the same as before are not touched, so running
it again changes nothing. `settled_cost_usd` is what the budget counters were charged when the request
ended, and stays so (budgets are not settled again), as does `spend_per_hour`, the rollup of settled spend.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from services.accounting.core import price_usage, sql_string_list
from shared.pricing import Rates
from shared.schemas.admin import RepriceRequest
from shared.schemas.chat import Usage

NO_USAGE = "no usage reported"
CHUNK = 1000  # rows per mutation
TOLERANCE_USD = 1e-9  # a rollup bucket this close to its rows is left alone (float sums in another order)
DAY_S = 86_400.0
_U64 = 2**64

ROW_COLUMNS = (
    "event_id", "requested_model", "provider_model", "provider", "provider_kind", "deployment",
    "toUnixTimestamp64Milli(received_at)", "input_tokens", "output_tokens", "cached_tokens",
    "cache_write_tokens", "cache_write_1h_tokens", "web_search_requests", "cost_usd", "price_version",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Change:
    event_id: str
    before: float | None
    after: float | None
    version: str


def windows(since: float, until: float, step: float = DAY_S) -> list[tuple[float, float]]:
    """[since, until) in steps (a day of rows at a time is read, priced and written)."""
    out = []
    start = since
    while start < until:
        out.append((start, min(start + step, until)))
        start += step
    return out


def rows_sql(request: RepriceRequest, since: float, until: float) -> str:
    where = [
        f"received_at >= toDateTime64({since:.3f}, 3, 'UTC')",
        f"received_at < toDateTime64({until:.3f}, 3, 'UTC')",
        f"price_version != '{NO_USAGE}'",
    ]
    if request.models:
        where.append(f"requested_model IN ({sql_string_list(request.models)})")
    if request.deployments:
        where.append(f"deployment IN ({sql_string_list(request.deployments)})")
    # FINAL: one row per event even before ClickHouse merged a replayed copy away
    return f"SELECT {', '.join(ROW_COLUMNS)} FROM requests FINAL WHERE {' AND '.join(where)}"  # noqa: S608


def change_of(row: Sequence[object], rates: Mapping[str, Rates], kinds: Mapping[str, str]) -> Change | None:
    """The new price of one row (ROW_COLUMNS order) if it differs from the stored one."""
    (event_id, model, provider_model, provider, kind, deployment, at_ms, i, o, cached, cw, cw1h, ws, cost, version) = (
        row
    )
    usage = Usage(
        input_tokens=int(i),  # type: ignore[call-overload]
        output_tokens=int(o),  # type: ignore[call-overload]
        cached_tokens=int(cached),  # type: ignore[call-overload]
        cache_write_tokens=int(cw),  # type: ignore[call-overload]
        cache_write_1h_tokens=int(cw1h),  # type: ignore[call-overload]
        web_search_requests=int(ws),  # type: ignore[call-overload]
    )
    provider_kind = str(kind) or kinds.get(str(provider), "")
    price = price_usage(
        usage,
        str(provider_model or model),
        provider_kind,
        int(at_ms) / 1000,  # type: ignore[call-overload]
        rates.get(str(deployment)),
    )
    before = None if cost is None else float(cost)  # type: ignore[arg-type]
    if price.cost_usd == before and price.version == version:
        return None
    return Change(str(event_id), before, price.cost_usd, price.version)


def _float(value: float | None) -> str:
    if value is None:
        return "NULL"
    if not math.isfinite(value):
        raise ValueError(f"not a price: {value}")
    return repr(float(value))


def update_sql(changes: Sequence[Change]) -> str:
    """One mutation writing the new cost and price version of these rows (by event id)."""
    ids = sql_string_list([c.event_id for c in changes])
    costs = ", ".join(_float(c.after) for c in changes)
    versions = sql_string_list([c.version for c in changes])
    return (
        f"ALTER TABLE requests UPDATE "
        f"cost_usd = transform(event_id, [{ids}], CAST([{costs}] AS Array(Nullable(Float64))), cost_usd), "
        f"price_version = transform(event_id, [{ids}], [{versions}], toString(price_version)) "
        f"WHERE event_id IN ({ids})"
    )


@dataclass(frozen=True, slots=True)
class Rollup:
    """A SummingMergeTree rollup of `requests` whose cost must follow the rows'."""

    table: str
    bucket: str  # its time column
    of: str  # that column as an expression over `requests`
    keys: tuple[str, ...]
    step_s: int
    unpriced: bool  # it also counts rows without a price


ROLLUPS = (
    Rollup("requests_per_minute", "minute", "toStartOfMinute(received_at)",
           ("key_id", "team", "requested_model", "provider"), 60, False),
    Rollup("requests_per_hour", "hour", "toStartOfHour(received_at)",
           ("key_id", "team", "project", "requested_model", "provider"), 3600, True),
)  # fmt: skip


def bucket_range(rollup: Rollup, since: float, until: float) -> tuple[int, int]:
    """The whole buckets covering [since, until)."""
    return int(since // rollup.step_s * rollup.step_s), int(math.ceil(until / rollup.step_s) * rollup.step_s)


def rows_side_sql(rollup: Rollup, since: float, until: float) -> str:
    low, high = bucket_range(rollup, since, until)
    keys = ", ".join(rollup.keys)
    unpriced = ", countIf(cost_usd IS NULL)" if rollup.unpriced else ""
    return (
        f"SELECT toUnixTimestamp({rollup.of}) AS b, {keys}, sum(ifNull(cost_usd, 0)){unpriced} FROM requests FINAL "  # noqa: S608
        f"WHERE received_at >= toDateTime64({low}, 3, 'UTC') AND received_at < toDateTime64({high}, 3, 'UTC') "
        f"GROUP BY b, {keys}"
    )


def rollup_side_sql(rollup: Rollup, since: float, until: float) -> str:
    low, high = bucket_range(rollup, since, until)
    keys = ", ".join(rollup.keys)
    unpriced = ", sum(unpriced)" if rollup.unpriced else ""
    return (
        f"SELECT toUnixTimestamp({rollup.bucket}) AS b, {keys}, sum(cost_usd){unpriced} FROM {rollup.table} "  # noqa: S608
        f"WHERE {rollup.bucket} >= toDateTime({low}, 'UTC') AND {rollup.bucket} < toDateTime({high}, 'UTC') "
        f"GROUP BY b, {keys}"
    )


def corrections(
    rollup: Rollup, rows: Sequence[Sequence[object]], rolled: Sequence[Sequence[object]]
) -> tuple[list[str], list[list[object]]]:
    """(columns, rows) to insert into the rollup so each bucket's cost (and unpriced count) equals its rows'.

    A correction row counts no request and no token: SummingMergeTree adds its cost to the bucket. A negative
    count of unpriced rows is written modulo 2^64, which UInt64 sums wrap back to the right value."""
    width = 1 + len(rollup.keys)
    want = {tuple(r[:width]): r[width:] for r in rows}
    have = {tuple(r[:width]): r[width:] for r in rolled}
    columns = [rollup.bucket, *rollup.keys, "cost_usd"] + (["unpriced"] if rollup.unpriced else [])
    out: list[list[object]] = []
    for key in sorted(set(want) | set(have), key=str):
        w, h = want.get(key), have.get(key)
        cost = float(w[0] if w else 0.0) - float(h[0] if h else 0.0)  # type: ignore[arg-type]
        unpriced = int(w[1] if w else 0) - int(h[1] if h else 0) if rollup.unpriced else 0  # type: ignore[call-overload]
        if abs(cost) <= TOLERANCE_USD and unpriced == 0:
            continue
        row: list[object] = [datetime.fromtimestamp(int(key[0]), tz=UTC), *key[1:], cost]  # type: ignore[call-overload]
        if rollup.unpriced:
            row.append(unpriced % _U64)
        out.append(row)
    return columns, out
