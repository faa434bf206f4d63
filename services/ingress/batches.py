"""The OpenAI Batch API on ingress: `/v1/files` (purpose `batch`, JSONL up to `batch.max_file_bytes`) kept in
the files object store, and `/v1/batches`, answered by the batch service over `<p>.batch.api`, so the
official SDKs' `files.create`, `batches.create`, `batches.retrieve`, `batches.list`, `batches.cancel` and
`files.content` work unchanged. Anthropic's Message Batches API is in `anthropic_batches.py`.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping

import msgspec
from nats.aio.client import Client
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from services.ingress.body import read_body
from services.ingress.multipart import read_upload
from shared.auth import Authenticator, bearer_token
from shared.config import GatehouseConfig
from shared.directory import Entitlement
from shared.errors import (
    ErrorInfo,
    GatewayError,
    InvalidRequestError,
    NotFoundError,
    PayloadTooLargeError,
    ServiceUnavailableError,
    error_body,
)
from shared.files import FileStore, StoredFile, new_file_id
from shared.schemas.batch import BatchCall, BatchReply, CancelJob, CreateJob, DeleteFile, GetJob, ListJobs
from shared.subjects import Subjects

log = logging.getLogger("gatehouse.ingress.batches")

MAX_JSON_BYTES = 64 * 1024
MULTIPART_OVERHEAD = 64 * 1024  # the form's boundaries, headers and `purpose` field around the file
API_TIMEOUT_S = 120.0  # a create reads and prices the whole file
PARTIAL_HEADER = "x-gatehouse-batch-partial"  # run the affordable part of a job the key's budget cannot cover
_JSON = msgspec.json.Encoder()


class _CreateBody(msgspec.Struct, kw_only=True):
    input_file_id: str
    endpoint: str
    completion_window: str
    metadata: dict[str, str] | None = None


class BatchEndpoints:
    def __init__(
        self, config: GatehouseConfig, subjects: Subjects, auth: Authenticator, connection: Callable[[], Client]
    ) -> None:
        self._config = config
        self._subjects = subjects
        self._auth = auth
        self._connection = connection
        self._retention_s = config.batch.retention_days * 86400
        self.files: FileStore | None = None

    def start(self, files: FileStore) -> None:
        self.files = files

    @property
    def max_file_bytes(self) -> int:
        return self._config.batch.max_file_bytes

    def routes(self) -> list[Route]:
        h = guarded
        return [
            Route("/v1/files", h(self.upload_file), methods=["POST"]),
            Route("/v1/files", h(self.list_files), methods=["GET"]),
            Route("/v1/files/{file_id}", h(self.get_file), methods=["GET"]),
            Route("/v1/files/{file_id}", h(self.delete_file), methods=["DELETE"]),
            Route("/v1/files/{file_id}/content", h(self.file_content), methods=["GET"]),
            Route("/v1/batches", h(self.create_batch), methods=["POST"]),
            Route("/v1/batches", h(self.list_batches), methods=["GET"]),
            Route("/v1/batches/{batch_id}", h(self.get_batch), methods=["GET"]),
            Route("/v1/batches/{batch_id}/cancel", h(self.cancel_batch), methods=["POST"]),
        ]

    # ---- helpers ------------------------------------------------------------------------------------
    def who(self, request: Request) -> tuple[Entitlement, str]:
        """The caller's entitlement and its key (which every call to the batch service names)."""
        authorization, x_api_key = request.headers.get("authorization"), request.headers.get("x-api-key")
        ent = self._auth.authenticate(authorization, x_api_key)
        return ent, bearer_token(authorization, x_api_key)

    def store(self) -> FileStore:
        if self.files is None:
            raise ServiceUnavailableError("The gateway is starting; try again shortly.")
        return self.files

    async def call(self, call: BatchCall) -> BatchReply:
        """One call to the batch service; its refusal is raised as the error it carries."""
        api = self._subjects.batch_api
        try:
            msg = await self._connection().request(api.name, api.encode(call), timeout=API_TIMEOUT_S)
        except Exception as exc:
            raise ServiceUnavailableError("The batch service did not answer; try again shortly.") from exc
        reply = api.decode_reply(msg.data)
        if reply.error is not None:
            raise _Refused(reply.error)
        return reply

    async def _owned_file(self, request: Request) -> tuple[StoredFile, FileStore]:
        ent, _ = self.who(request)
        file_id = request.path_params["file_id"]
        store = self.store()
        info = await store.info(file_id)
        if info is None or info.key_id != ent.key.id:
            raise NotFoundError(f"No such File object: {file_id[:100]}", param="id", code="not_found")
        return info, store

    # ---- files ------------------------------------------------------------------------------------------
    async def upload_file(self, request: Request) -> Response:
        ent, _ = self.who(request)
        limit = self._config.batch.max_file_bytes
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit + MULTIPART_OVERHEAD:
            raise PayloadTooLargeError(f"The file is larger than the limit of {limit} bytes.")
        upload = await read_upload(
            request.stream(), request.headers.get("content-type", ""), limit + MULTIPART_OVERHEAD
        )
        try:
            purpose = upload.fields.get("purpose", "")
            if purpose != "batch":
                raise InvalidRequestError(
                    f"Invalid purpose {purpose[:40]!r}: gatehouse stores files for batches (`batch`).", param="purpose"
                )
            if upload.file is None:
                raise InvalidRequestError("Missing the `file` part of the upload.", param="file")
            if upload.size > limit:
                raise PayloadTooLargeError(f"The file is {upload.size} bytes; the limit is {limit} bytes.")
            record = StoredFile(
                id=new_file_id(),
                bytes=upload.size,
                created_at=time.time(),
                filename=upload.filename,
                purpose="batch",
                key_id=ent.key.id,
            )
            await self.store().put(record, upload.file)
        finally:
            upload.close()
        return JSONResponse(record.openai(self._retention_s))

    async def list_files(self, request: Request) -> Response:
        ent, _ = self.who(request)
        purpose = request.query_params.get("purpose", "")
        try:
            limit = max(1, min(int(request.query_params.get("limit", "10000")), 10_000))
        except ValueError as exc:
            raise InvalidRequestError("`limit` must be an integer.", param="limit") from exc
        after = request.query_params.get("after", "")
        files = [f for f in await self.store().list(ent.key.id) if not purpose or f.purpose == purpose]
        if after:
            ids = [f.id for f in files]
            files = files[ids.index(after) + 1 :] if after in ids else []
        page = [f.openai(self._retention_s) for f in files[:limit]]
        return JSONResponse(
            {
                "object": "list",
                "data": page,
                "first_id": page[0]["id"] if page else None,
                "last_id": page[-1]["id"] if page else None,
                "has_more": len(files) > limit,
            }
        )

    async def get_file(self, request: Request) -> Response:
        info, _ = await self._owned_file(request)
        return JSONResponse(info.openai(self._retention_s))

    async def file_content(self, request: Request) -> Response:
        info, store = await self._owned_file(request)
        data = await store.read(info.id)
        return Response(data, media_type="application/jsonl" if info.filename.endswith("jsonl") else None)

    async def delete_file(self, request: Request) -> Response:
        _, key = self.who(request)
        file_id = request.path_params["file_id"]
        try:
            await self.call(DeleteFile(key=key, file_id=file_id))
        except _Refused as exc:
            if exc.info.status == 404:
                raise NotFoundError(f"No such File object: {file_id[:100]}", param="id", code="not_found") from exc
            raise
        return JSONResponse({"id": file_id, "object": "file", "deleted": True})

    # ---- batches ----------------------------------------------------------------------------------------
    async def create_batch(self, request: Request) -> Response:
        _, key = self.who(request)
        raw = await read_body(request, MAX_JSON_BYTES)
        try:
            body = msgspec.json.decode(raw, type=_CreateBody)
        except msgspec.MsgspecError as exc:
            raise InvalidRequestError(f"Invalid batch request: {str(exc)[:300]}") from exc
        partial = request.headers.get(PARTIAL_HEADER, "").lower() in ("1", "true", "yes")
        reply = await self.call(
            CreateJob(
                key=key,
                input_file_id=body.input_file_id,
                endpoint=body.endpoint,
                completion_window=body.completion_window,
                metadata=body.metadata or {},
                partial=partial,
            )
        )
        return _json(reply.job)

    async def get_batch(self, request: Request) -> Response:
        _, key = self.who(request)
        reply = await self.call(GetJob(key=key, job_id=request.path_params["batch_id"]))
        return _json(reply.job)

    async def cancel_batch(self, request: Request) -> Response:
        _, key = self.who(request)
        reply = await self.call(CancelJob(key=key, job_id=request.path_params["batch_id"]))
        return _json(reply.job)

    async def list_batches(self, request: Request) -> Response:
        _, key = self.who(request)
        try:
            limit = int(request.query_params.get("limit", "20"))
        except ValueError as exc:
            raise InvalidRequestError("`limit` must be an integer.", param="limit") from exc
        after = request.query_params.get("after", "")
        reply = await self.call(ListJobs(key=key, after=after, limit=limit, surface="openai"))
        data = [msgspec.to_builtins(job) for job in reply.jobs]
        return JSONResponse(
            {
                "object": "list",
                "data": data,
                "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None,
                "has_more": reply.has_more,
            }
        )


class _Refused(Exception):
    """The batch service's error answer, passed on to the client as it is."""

    def __init__(self, info: ErrorInfo) -> None:
        super().__init__(info.message)
        self.info = info


def _json(obj: object) -> Response:
    return Response(_JSON.encode(obj), media_type="application/json")


Handler = Callable[[Request], Awaitable[Response]]


def guarded(handler: Handler, envelope: Callable[[ErrorInfo], Mapping[str, object]] = error_body) -> Handler:
    """Errors (the gateway's or the batch service's) as the surface's error body with their status."""

    async def wrapper(request: Request) -> Response:
        try:
            return await handler(request)
        except _Refused as exc:
            info = exc.info
        except GatewayError as exc:
            info = exc.info()
        except Exception:
            log.exception("batch API call %s failed", request.url.path)
            info = GatewayError("The gateway hit an internal error.").info()
        headers = {}
        if info.retry_after is not None:
            headers["retry-after"] = str(max(math.ceil(info.retry_after), 0))
        return JSONResponse(dict(envelope(info)), status_code=info.status, headers=headers)

    return wrapper
