"""Anthropic's Message Batches API on ingress (`/v1/messages/batches`), so the official `anthropic` SDK's
`messages.batches.create / retrieve / list / cancel / results` work against any backend model.

Each request's `params` are translated to the canonical chat form as `/v1/messages` does, the job runs like an
OpenAI batch (same governance, same batch service), and results are translated back: `succeeded` with an
Anthropic message, `errored`, `canceled` or `expired`.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime

import msgspec
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from services.ingress import apis
from services.ingress.batches import BatchEndpoints, Handler, guarded
from services.ingress.body import read_body
from services.ingress.surfaces.anthropic_messages import error_body, from_chat
from shared.errors import ErrorInfo, GatewayError, InvalidRequestError
from shared.files import StoredFile, new_file_id
from shared.schemas.batch import BatchObject, CancelJob, CreateJob, GetJob, ListJobs
from shared.schemas.openai import to_json

CUSTOM_ID = re.compile(r"[a-zA-Z0-9_-]{1,64}")
FINAL = frozenset({"completed", "failed", "expired", "cancelled"})
_JSON = msgspec.json.Encoder()


class _Entry(msgspec.Struct):
    custom_id: str
    params: msgspec.Raw


class _Create(msgspec.Struct):
    requests: list[_Entry]


class _Line(msgspec.Struct):
    custom_id: str | None = None
    response: dict[str, object] | None = None
    error: dict[str, object] | None = None


_LINE = msgspec.json.Decoder(_Line)


def _iso(ts: int | None) -> str | None:
    return datetime.fromtimestamp(ts, tz=UTC).isoformat().replace("+00:00", "Z") if ts is not None else None


def message_batch(job: BatchObject, base_url: str) -> dict[str, object]:
    """Anthropic's `message_batch` for a job."""
    counts, gh = job.request_counts, job.gatehouse
    ended = job.status in FINAL
    canceled = gh.cancelled if job.cancelling_at is not None else 0
    expired = gh.cancelled if job.status == "expired" else 0
    return {
        "id": job.id,
        "type": "message_batch",
        "processing_status": "ended" if ended else ("canceling" if job.status == "cancelling" else "in_progress"),
        "request_counts": {
            "processing": max(counts.total - counts.completed - counts.failed, 0),
            "succeeded": counts.completed,
            "errored": max(counts.failed - canceled - expired, 0),
            "canceled": canceled,
            "expired": expired,
        },
        "ended_at": _iso(job.completed_at or job.cancelled_at or job.expired_at or job.failed_at) if ended else None,
        "created_at": _iso(job.created_at),
        "expires_at": _iso(job.expires_at),
        "archived_at": None,
        "cancel_initiated_at": _iso(job.cancelling_at),
        "results_url": f"{base_url}/v1/messages/batches/{job.id}/results" if ended else None,
    }


def result_line(line: _Line, model: str) -> dict[str, object]:
    """One OpenAI batch result line → one Anthropic batch result."""
    if line.response is not None:
        status = line.response.get("status_code")
        body = line.response.get("body")
        if status == 200 and isinstance(body, dict):
            message = from_chat(body, model or str(body.get("model", "")))
            return {"custom_id": line.custom_id, "result": {"type": "succeeded", "message": message}}
        error = body.get("error") if isinstance(body, dict) else None
        message_text = str(error.get("message", "")) if isinstance(error, dict) else ""
        info = ErrorInfo(status=status if isinstance(status, int) else 500, type="", code="", message=message_text)
        return {"custom_id": line.custom_id, "result": {"type": "errored", "error": error_body(info)}}
    code = str((line.error or {}).get("code", ""))
    if code == "batch_cancelled":
        return {"custom_id": line.custom_id, "result": {"type": "canceled"}}
    if code == "batch_expired":
        return {"custom_id": line.custom_id, "result": {"type": "expired"}}
    info = ErrorInfo(status=400, type="", code=code, message=str((line.error or {}).get("message", "")))
    return {"custom_id": line.custom_id, "result": {"type": "errored", "error": error_body(info)}}


class AnthropicBatches:
    def __init__(self, endpoints: BatchEndpoints) -> None:
        self._batches = endpoints

    def routes(self) -> list[Route]:
        h = _anthropic_errors
        return [
            Route("/v1/messages/batches", h(self.create), methods=["POST"]),
            Route("/v1/messages/batches", h(self.list), methods=["GET"]),
            Route("/v1/messages/batches/{batch_id}", h(self.retrieve), methods=["GET"]),
            Route("/v1/messages/batches/{batch_id}/cancel", h(self.cancel), methods=["POST"]),
            Route("/v1/messages/batches/{batch_id}/results", h(self.results), methods=["GET"]),
        ]

    @staticmethod
    def _base(request: Request) -> str:
        return str(request.base_url).rstrip("/")

    async def create(self, request: Request) -> Response:
        ent, key = self._batches.who(request)
        raw = await read_body(request, self._batches.max_file_bytes)
        try:
            body = msgspec.json.decode(raw, type=_Create)
        except msgspec.MsgspecError as exc:
            raise InvalidRequestError(f"Invalid batch: {str(exc)[:300]}") from exc
        if not body.requests:
            raise InvalidRequestError("`requests` is empty.", param="requests")
        lines: list[bytes] = []
        seen: set[str] = set()
        for n, entry in enumerate(body.requests):
            if not CUSTOM_ID.fullmatch(entry.custom_id) or entry.custom_id in seen:
                raise InvalidRequestError(
                    f"requests[{n}].custom_id must be unique, 1 to 64 letters, digits, '-' or '_'.",
                    param=f"requests[{n}].custom_id",
                )
            seen.add(entry.custom_id)
            try:
                chat = apis.MESSAGES.parse(bytes(entry.params), request.headers).chat
            except GatewayError as exc:
                raise InvalidRequestError(f"requests[{n}].params: {exc.message}", param=f"requests[{n}]") from exc
            assert chat is not None
            line = b'{"custom_id":' + _JSON.encode(entry.custom_id) + b',"method":"POST","url":"/v1/chat/completions",'
            lines.append(line + b'"body":' + to_json(chat) + b"}")
        data = b"\n".join(lines) + b"\n"
        record = StoredFile(
            id=new_file_id(), bytes=len(data), created_at=time.time(), filename="message_batch.jsonl",
            purpose="batch", key_id=ent.key.id,
        )  # fmt: skip
        await self._batches.store().put(record, data)
        reply = await self._batches.call(
            CreateJob(
                key=key,
                input_file_id=record.id,
                endpoint="/v1/chat/completions",
                completion_window="24h",
                surface="anthropic",
            )
        )
        assert reply.job is not None
        return JSONResponse(message_batch(reply.job, self._base(request)))

    async def retrieve(self, request: Request) -> Response:
        _, key = self._batches.who(request)
        reply = await self._batches.call(GetJob(key=key, job_id=request.path_params["batch_id"]))
        assert reply.job is not None
        return JSONResponse(message_batch(reply.job, self._base(request)))

    async def cancel(self, request: Request) -> Response:
        _, key = self._batches.who(request)
        reply = await self._batches.call(CancelJob(key=key, job_id=request.path_params["batch_id"]))
        assert reply.job is not None
        return JSONResponse(message_batch(reply.job, self._base(request)))

    async def list(self, request: Request) -> Response:
        _, key = self._batches.who(request)
        try:
            limit = int(request.query_params.get("limit", "20"))
        except ValueError as exc:
            raise InvalidRequestError("`limit` must be an integer.", param="limit") from exc
        after = request.query_params.get("after_id", "")
        reply = await self._batches.call(ListJobs(key=key, after=after, limit=limit, surface="anthropic"))
        data = [message_batch(job, self._base(request)) for job in reply.jobs]
        return JSONResponse(
            {
                "data": data,
                "has_more": reply.has_more,
                "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None,
            }
        )

    async def results(self, request: Request) -> Response:
        _, key = self._batches.who(request)
        reply = await self._batches.call(GetJob(key=key, job_id=request.path_params["batch_id"]))
        job = reply.job
        assert job is not None
        if job.status not in FINAL:
            raise InvalidRequestError(f"Batch {job.id} has not ended yet; its results are available once it has.")
        store = self._batches.store()
        out: list[bytes] = []
        for file_id in (job.output_file_id, job.error_file_id):
            if not file_id:
                continue
            for raw in (await store.read(file_id)).splitlines():
                if raw.strip():
                    out.append(_JSON.encode(result_line(_LINE.decode(raw), job.gatehouse.model)))
        return Response(b"\n".join(out) + (b"\n" if out else b""), media_type="application/x-jsonl")


def _anthropic_errors(handler: Handler) -> Handler:
    """The batch endpoints' error handling, with errors in Anthropic's envelope."""
    return guarded(handler, error_body)
