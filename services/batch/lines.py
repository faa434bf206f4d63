"""What clients read (pure): a stored result → an OpenAI Batch output or error line, a job → OpenAI's batch
object, and the output and error files of a finished job.

Output file: one line per request that answered 200, `{"id", "custom_id", "response": {"status_code",
"request_id", "body"}, "error": null}`. Error file: requests that answered an error (the same shape, the
error body in `response.body`) and requests that never ran (`"response": null, "error": {"code",
"message"}`: a line that could not be read, a budget that could not cover it, a cancel or the expiry).
"""

from __future__ import annotations

from collections.abc import Iterable

import msgspec

from services.batch.lifecycle import Progress
from shared.schemas.batch import (
    BatchErrorData,
    BatchErrors,
    BatchExtension,
    BatchJob,
    BatchObject,
    LineError,
    LineResponse,
    RequestCounts,
    ResultLine,
    StoredResult,
)

_JSON = msgspec.json.Encoder()


def result_line(result: StoredResult, batch_id: str = "") -> ResultLine:
    if result.ran:
        response = LineResponse(
            status_code=result.status, request_id=result.request_id, body=msgspec.Raw(result.body or b"{}")
        )
        return ResultLine(
            id=f"batch_req_{result.request_id}",
            custom_id=result.item_id,
            response=response,
            error=None,
            batch_id=batch_id,
        )
    error = result.error
    line_error = LineError(code=error.code, message=error.message) if error else LineError(code="failed", message="")
    return ResultLine(
        id=f"batch_req_{result.request_id}",
        custom_id=result.item_id,
        response=None,
        error=line_error,
        batch_id=batch_id,
    )


def is_output(result: StoredResult) -> bool:
    return result.ran and result.status == 200


def files(results: Iterable[StoredResult]) -> tuple[bytes, bytes]:
    """The output and error files (JSONL) of a job's results, in input order."""
    ordered = sorted(results, key=lambda r: (r.index if r.index >= 0 else 1 << 62, r.finished_at, r.item_id or ""))
    out: list[bytes] = []
    err: list[bytes] = []
    for r in ordered:
        (out if is_output(r) else err).append(_JSON.encode(result_line(r)))
    return (b"\n".join(out) + b"\n" if out else b""), (b"\n".join(err) + b"\n" if err else b"")


def _ts(value: float | None) -> int | None:
    return int(value) if value is not None else None


def batch_object(job: BatchJob, progress: Progress | None = None) -> BatchObject:
    """OpenAI's batch object of a job; `progress`: the live counts of a running job (else the job's own)."""
    if progress is None or job.status not in ("validating", "in_progress", "cancelling", "finalizing"):
        counts = RequestCounts(total=job.total, completed=job.completed, failed=job.failed)
        cost, cancelled = job.cost_usd, job.cancelled_items
    else:
        counts = RequestCounts(total=job.total, completed=progress.completed, failed=progress.failed)
        cost, cancelled = progress.cost_micro / 1_000_000, progress.cancelled
    errors = None
    if job.errors:
        errors = BatchErrors(data=[BatchErrorData(code=e.code, message=e.message) for e in job.errors])
    return BatchObject(
        id=job.id,
        endpoint=job.endpoint,
        errors=errors,
        input_file_id=job.input_file_id,
        completion_window=job.completion_window,
        status=job.status,
        output_file_id=job.output_file_id or None,
        error_file_id=job.error_file_id or None,
        created_at=int(job.created_at),
        in_progress_at=_ts(job.in_progress_at),
        expires_at=int(job.expires_at),
        finalizing_at=_ts(job.finalizing_at),
        completed_at=_ts(job.completed_at),
        failed_at=_ts(job.failed_at),
        expired_at=_ts(job.expired_at),
        cancelling_at=_ts(job.cancelling_at),
        cancelled_at=_ts(job.cancelled_at),
        request_counts=counts,
        metadata=job.metadata or None,
        gatehouse=BatchExtension(
            cost_usd=round(cost, 6),
            reserved_usd=job.reserved_micro / 1_000_000,
            not_affordable=job.not_affordable,
            cancelled=cancelled,
            key_id=job.caller.key_id,
            surface=job.surface,
            model=job.model,
        ),
    )
