"""`<p>.batch.api`: the batch service's calls (JSON request/reply) — create, get, list, cancel a job, read a
page of its results, delete a file — for ingress's OpenAI Batch API and for producers on the bus alike.
Every call names its API key; a job or file is seen only by the key that made it.
"""

from __future__ import annotations

import logging

from services.batch.jobs import JobControl, JobExists
from services.batch.lifecycle import ACTIVE, Progress
from services.batch.lines import batch_object, is_output, result_line
from shared.auth import Authenticator
from shared.errors import ErrorInfo, GatewayError, InvalidRequestError, NotFoundError
from shared.schemas.batch import (
    BatchCall,
    BatchJob,
    BatchObject,
    BatchReply,
    CancelJob,
    CreateJob,
    DeleteFile,
    GetJob,
    JobResults,
    ListJobs,
    ResultLine,
)
from shared.subjects import JsonService

log = logging.getLogger("gatehouse.batch.api")

MAX_PAGE = 100
MAX_RESULTS_PAGE = 5_000


class BatchApi:
    def __init__(
        self,
        control: JobControl,
        auth: Authenticator,
        subject: JsonService[BatchCall, BatchReply],
        max_reply_bytes: int = 4 * 1024 * 1024,
    ) -> None:
        self.control = control
        self.auth = auth
        self.subject = subject
        self.max_reply_bytes = max_reply_bytes  # below the server's max_payload

    async def answer(self, data: bytes) -> bytes:
        """The reply to one call: what it asked for, or an error (never an exception)."""
        try:
            call = self.subject.decode(data)
        except Exception as exc:
            info = InvalidRequestError(f"Malformed batch call: {str(exc)[:300]}").info()
            return self.subject.encode_reply(BatchReply(error=info))
        try:
            reply = await self._call(call)
        except JobExists as exc:  # created again by its own key: the item token goes to its creator again
            reply = BatchReply(job=await self._view(exc.job), item_token=exc.job.item_token)
        except GatewayError as exc:
            reply = BatchReply(error=exc.info())
        except Exception:
            log.exception("batch call %s failed", type(call).__name__)
            error = ErrorInfo(status=500, type="api_error", code="internal_error", message="The batch service failed.")
            reply = BatchReply(error=error)
        return self.subject.encode_reply(reply)

    async def _view(self, job: BatchJob) -> BatchObject:
        progress = await self.control.progress(job) if job.status in ACTIVE else None
        return batch_object(job, progress)

    async def _owned(self, job_id: str, key_id: str) -> BatchJob:
        got = await self.control.env.jobs.read(job_id)
        if got is None or got[0].caller.key_id != key_id:
            raise NotFoundError(f"No batch found with id '{job_id[:100]}'.", param="batch_id")
        return got[0]

    async def _call(self, call: BatchCall) -> BatchReply:
        ent = self.auth.authenticate(f"Bearer {call.key}")
        key_id = ent.key.id
        if isinstance(call, CreateJob):
            job = await self.control.create(call, ent)
            return BatchReply(job=batch_object(job, Progress()), item_token=job.item_token)
        if isinstance(call, GetJob):
            return BatchReply(job=await self._view(await self._owned(call.job_id, key_id)))
        if isinstance(call, CancelJob):
            return BatchReply(job=await self._view(await self.control.cancel(call.job_id, key_id)))
        if isinstance(call, ListJobs):
            return await self._list(call, key_id)
        if isinstance(call, JobResults):
            return await self._results(call, key_id)
        assert isinstance(call, DeleteFile)
        info = await self.control.files.info(call.file_id)
        if info is None or info.key_id != key_id:
            raise NotFoundError(f"No such File object: {call.file_id[:100]}", param="file_id")
        await self.control.files.delete(call.file_id)
        return BatchReply()

    async def _list(self, call: ListJobs, key_id: str) -> BatchReply:
        mine = [
            job
            for job, _ in self.control.env.jobs.jobs.values()
            if job.caller.key_id == key_id and (not call.surface or job.surface == call.surface)
        ]
        mine.sort(key=lambda j: (j.created_at, j.id), reverse=True)
        if call.after:
            ids = [j.id for j in mine]
            mine = mine[ids.index(call.after) + 1 :] if call.after in ids else []
        limit = max(1, min(call.limit, MAX_PAGE))
        page = mine[:limit]
        return BatchReply(jobs=[await self._view(j) for j in page], has_more=len(mine) > limit)

    async def _results(self, call: JobResults, key_id: str) -> BatchReply:
        await self._owned(call.job_id, key_id)
        if call.which not in ("all", "output", "error"):
            raise InvalidRequestError("`which` is all, output or error.", param="which")
        limit = max(1, min(call.limit, MAX_RESULTS_PAGE))
        stored, after, more = await self.control.env.results.page(call.job_id, call.after, limit)
        lines: list[ResultLine] = []
        size = 0
        for seq, r in stored:
            if call.which != "all" and (call.which == "output") != is_output(r):
                continue
            line = result_line(r)
            size += len(r.body) + 512
            if lines and size > self.max_reply_bytes:  # the rest on the next page: a reply fits in a message
                after, more = seq - 1, True
                break
            lines.append(line)
        return BatchReply(results=lines, next=after, has_more=more)
