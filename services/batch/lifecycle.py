"""A job's life (pure): its states, what each allows, how its counts come from its results, and its end.

validating → in_progress → finalizing → completed | expired | cancelled, or failed (at creation);
validating | in_progress → cancelling → (finalizing) → cancelled. A job's items run while it is
`in_progress` and not past its expiry; after a cancel or the expiry, the items still queued are answered
`batch_cancelled` / `batch_expired` without running.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import msgspec

from shared.errors import ErrorInfo
from shared.schemas.batch import BatchJob, StoredResult

ACTIVE = frozenset({"validating", "in_progress", "cancelling", "finalizing"})
FINAL = frozenset({"completed", "failed", "expired", "cancelled"})
CANCELLABLE = frozenset({"validating", "in_progress"})

CANCELLED = ErrorInfo(
    status=0,
    type="batch_error",
    code="batch_cancelled",
    message="This request was not executed because the batch was cancelled.",
)
EXPIRED = ErrorInfo(
    status=0,
    type="batch_error",
    code="batch_expired",
    message="This request could not be executed before the completion window expired.",
)


@dataclass(frozen=True, slots=True)
class Progress:
    """A job's counts: requests that answered 200, the rest (never run included), cost and reservation used."""

    completed: int = 0
    failed: int = 0
    cancelled: int = 0  # of failed: never ran (the job was cancelled or expired)
    cost_micro: int = 0
    shares_micro: int = 0  # the parts of the job's reservation that items' records settle

    @property
    def done(self) -> int:
        return self.completed + self.failed


def progress_of(results: Iterable[StoredResult]) -> Progress:
    completed = failed = cancelled = cost = shares = 0
    for r in results:
        if r.ran and r.status == 200:
            completed += 1
        else:
            failed += 1
        if not r.ran and r.error is not None and r.error.code in (CANCELLED.code, EXPIRED.code):
            cancelled += 1
        cost += round(r.cost_usd * 1_000_000)
        shares += r.share_micro
    return Progress(completed, failed, cancelled, cost, shares)


def runs(job: BatchJob, now: float) -> bool:
    """Whether the job's items may be dispatched now."""
    return job.status == "in_progress" and now < job.expires_at


def stopped(job: BatchJob, now: float) -> ErrorInfo | None:
    """Why an item of this job must not run any more (cancelled or expired), or None."""
    if job.status in {"cancelling", "cancelled"} or job.cancelling_at is not None:
        return CANCELLED
    if now >= job.expires_at or job.status == "expired":
        return EXPIRED
    return None


def cancelling(job: BatchJob, now: float) -> BatchJob:
    return msgspec.structs.replace(job, status="cancelling", cancelling_at=now)


def final_status(job: BatchJob, progress: Progress, now: float) -> str:
    """How a job ends: cancelled if it was cancelled, expired if its window closed before every item ran."""
    if job.cancelling_at is not None:
        return "cancelled"
    if progress.done < job.total or progress.cancelled:
        return "expired"
    return "completed"


def finished(job: BatchJob, progress: Progress, now: float, output_file_id: str, error_file_id: str) -> BatchJob:
    status = final_status(job, progress, now)
    missing = max(job.total - progress.done, 0)  # declared items that were never published
    stamps: dict[str, float] = {"completed_at": now}
    if status == "cancelled":
        stamps = {"cancelled_at": now}
    elif status == "expired":
        stamps = {"expired_at": now}
    return msgspec.structs.replace(
        job,
        status=status,
        completed=progress.completed,
        failed=progress.failed + missing,
        cancelled_items=progress.cancelled + missing,
        cost_usd=progress.cost_micro / 1_000_000,
        output_file_id=output_file_id,
        error_file_id=error_file_id,
        **stamps,
    )
