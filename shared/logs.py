"""Structured (one JSON object per line) logging for every service.

Every line written while a stage works on a request carries that request's `request_id` and `trace_id`:
the stage binds them (`bind_request`) when it starts on the request, in the asyncio task that serves it,
so they follow the work and nothing else; the batch service binds the job and item ids too (`bind_batch`).
Log messages name ids, models, rules and error codes; never a prompt, a completion, a key or a secret.
"""

from __future__ import annotations

import contextvars
import logging
import sys
import time
from types import TracebackType

import msgspec

_ENC = msgspec.json.Encoder()
_REQUEST: contextvars.ContextVar[tuple[str, str] | None] = contextvars.ContextVar("gatehouse_request", default=None)
_BATCH: contextvars.ContextVar[tuple[str, str] | None] = contextvars.ContextVar("gatehouse_batch", default=None)


def bind_request(request_id: str, trace_id: str) -> None:
    """Tag every log line of the current task (and the tasks it starts) with the request and its trace."""
    _REQUEST.set((request_id, trace_id))


def bind_batch(job_id: str, item_id: str = "") -> contextvars.Token[tuple[str, str] | None]:
    """Tag every log line of the current task with a batch job (and item); the token undoes it."""
    return _BATCH.set((job_id, item_id))


def unbind_batch(token: contextvars.Token[tuple[str, str] | None]) -> None:
    _BATCH.reset(token)


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "service": self.service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        bound = _REQUEST.get()
        if bound is not None:
            entry["request_id"], entry["trace_id"] = bound
        batch = _BATCH.get()
        if batch is not None:
            entry["job_id"] = batch[0]
            if batch[1]:
                entry["item_id"] = batch[1]
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return _ENC.encode(entry).decode()


def setup_logging(service: str, level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # httpx logs every request at INFO; per-request lines belong in ClickHouse, not the log
    logging.getLogger("httpx").setLevel(logging.WARNING)
    # warnings and a crash's traceback are log lines too, in the same JSON
    logging.captureWarnings(True)
    sys.excepthook = _log_uncaught


def _log_uncaught(kind: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
    if issubclass(kind, KeyboardInterrupt):
        sys.__excepthook__(kind, value, tb)
        return
    logging.getLogger("gatehouse").critical("uncaught exception; the process ends", exc_info=(kind, value, tb))
