"""What clients read: OpenAI's output and error lines, the batch object, and how a job ends."""

from __future__ import annotations

import json

import msgspec

from services.batch.lifecycle import CANCELLED, EXPIRED, Progress, final_status, finished, progress_of, stopped
from services.batch.lines import batch_object, files, result_line
from shared.errors import ErrorInfo
from shared.schemas.batch import BatchJob, StoredResult
from shared.schemas.chat import Caller

JOB = BatchJob(
    id="batch_1",
    status="in_progress",
    endpoint="/v1/chat/completions",
    caller=Caller(key_id="k"),
    total=4,
    created_at=1000.0,
    in_progress_at=1001.0,
    expires_at=1000.0 + 86400,
    reserved_micro=2_500_000,
    metadata={"run": "a"},
)
OK = StoredResult(job_id="batch_1", item_id="a", index=1, request_id="r1", status=200, body=b'{"id":"x"}', cost_usd=0.5)
FAILED = StoredResult(
    job_id="batch_1",
    item_id="b",
    index=0,
    request_id="r2",
    status=429,
    body=b'{"error":{"message":"slow down"}}',
    error=ErrorInfo(status=429, type="rate_limit_error", code="rate_limit_exceeded", message="slow down"),
)
NEVER = StoredResult(job_id="batch_1", item_id="c", index=2, request_id="r3", status=0, ran=False, error=CANCELLED)


def test_output_and_error_lines_in_openai_format() -> None:
    ok = json.loads(msgspec.json.encode(result_line(OK)))
    assert ok == {
        "id": "batch_req_r1",
        "custom_id": "a",
        "response": {"status_code": 200, "request_id": "r1", "body": {"id": "x"}},
        "error": None,
    }
    failed = json.loads(msgspec.json.encode(result_line(FAILED)))
    assert failed["response"]["status_code"] == 429 and failed["error"] is None
    never = json.loads(msgspec.json.encode(result_line(NEVER, batch_id="batch_1")))
    assert never["response"] is None and never["error"]["code"] == "batch_cancelled"
    assert never["batch_id"] == "batch_1"  # a result notice says which job


def test_files_split_output_from_errors_in_input_order() -> None:
    output, errors = files([NEVER, OK, FAILED])
    assert [json.loads(x)["custom_id"] for x in output.splitlines()] == ["a"]
    assert [json.loads(x)["custom_id"] for x in errors.splitlines()] == ["b", "c"]
    assert files([]) == (b"", b"")


def test_the_batch_object_has_openai_fields_and_the_live_counts() -> None:
    obj = json.loads(msgspec.json.encode(batch_object(JOB, Progress(completed=2, failed=1, cost_micro=750_000))))
    assert obj["object"] == "batch" and obj["status"] == "in_progress" and obj["created_at"] == 1000
    assert obj["request_counts"] == {"total": 4, "completed": 2, "failed": 1}
    assert obj["output_file_id"] is None and obj["metadata"] == {"run": "a"}
    assert obj["gatehouse"]["cost_usd"] == 0.75 and obj["gatehouse"]["reserved_usd"] == 2.5


def test_how_a_job_ends() -> None:
    progress = progress_of([OK, FAILED, NEVER])
    assert (progress.completed, progress.failed, progress.cancelled, progress.done) == (1, 2, 1, 3)
    assert final_status(JOB, progress_of([OK, FAILED, OK, OK]), 2000.0) == "completed"
    assert final_status(JOB, progress, 2000.0) == "expired"  # an item never ran, not by a cancel
    cancelled = msgspec.structs.replace(JOB, status="cancelling", cancelling_at=1500.0)
    assert final_status(cancelled, progress, 2000.0) == "cancelled"
    end = finished(cancelled, progress, 2000.0, "file-o", "")
    assert (end.status, end.cancelled_at, end.completed, end.failed, end.cancelled_items) == (
        "cancelled",
        2000.0,
        1,
        3,
        2,
    )
    assert stopped(JOB, 1500.0) is None
    assert stopped(cancelled, 1500.0) == CANCELLED
    assert stopped(JOB, JOB.expires_at) == EXPIRED
