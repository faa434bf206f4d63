"""What a job costs at worst, before it runs (pure): each item's worst case (the same estimate ingress
reserves for one request), the job's total, the affordable part of a job, and the ids and windows of jobs.

An item's worst case is its share of the job's reservation: accounting settles each item's record from
its share to its actual cost, and the part of the reservation no item took is given back when the job ends.
"""

from __future__ import annotations

import hashlib
import math
import re
import uuid
from collections.abc import Mapping, Sequence

from services.batch.input import Request
from shared.admission import Estimate
from shared.errors import InvalidRequestError
from shared.producers import may_notify
from shared.route_pricing import RoutePricing
from shared.schemas.chat import Caller
from shared.subjects import Subjects
from shared.tokens import embeddings_tokens, estimate_prompt_tokens
from shared.usage_policy import max_output

MICRO = 1_000_000
_WINDOW = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([smhd])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
JOB_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
# OpenAI's limits on a batch's metadata: 16 pairs, keys up to 64 characters, values up to 512
MAX_METADATA_PAIRS = 16
MAX_METADATA_KEY = 64
MAX_METADATA_VALUE = 512


def estimate(request: Request, pricing: RoutePricing, cap: int | None = None) -> Estimate:
    """The item's prompt (estimated from its text) and the most output it may have: its own max_tokens,
    else the model's, never above the job's declared cap, for each of its `n` choices."""
    if request.chat is not None:
        output = min(max_output(request.chat) or pricing.max_output, pricing.max_output)
        if cap is not None:
            output = min(output, cap)
        return Estimate(estimate_prompt_tokens(request.chat), output, pricing, request.chat.n or 1)
    assert request.embeddings is not None
    return Estimate(embeddings_tokens(request.embeddings), 0, pricing)


def micro(usd: float) -> int:
    """USD → micro-USD, rounded up (a reservation never falls short by a rounding)."""
    return math.ceil(usd * MICRO)


def declared_worst(pricing: RoutePricing, items: int, input_tokens: int, max_tokens: int) -> int:
    """The worst case of a declared job (micro-USD): its prompt tokens, and `max_tokens` of output per item."""
    return micro(pricing.worst_case(input_tokens, items * max_tokens))


def affordable(shares: Sequence[int], room: int) -> int:
    """How many leading items fit in `room` micro-USD."""
    total = 0
    for n, share in enumerate(shares):
        total += share
        if total > room:
            return n
    return len(shares)


def window_seconds(text: str, longest: float) -> float:
    """`24h`, `90m`, `2d` → seconds; a 400 for anything else or beyond `longest`."""
    match = _WINDOW.match(text)
    if not match:
        raise InvalidRequestError(
            f"Invalid completion_window {text[:40]!r}: use a duration such as 24h.", param="completion_window"
        )
    seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if seconds <= 0 or seconds > longest:
        raise InvalidRequestError(
            f"completion_window must be above 0 and at most {longest / 3600:g}h.", param="completion_window"
        )
    return seconds


def new_job_id() -> str:
    return f"batch_{uuid.uuid4().hex}"


def check_job_id(job_id: str) -> str:
    if not JOB_ID.fullmatch(job_id):
        raise InvalidRequestError("job_id must be 1 to 64 letters, digits, '-' or '_'.", param="job_id")
    return job_id


def check_metadata(metadata: Mapping[str, str]) -> dict[str, str]:
    """A job's metadata as OpenAI bounds it, or a 400 (it is kept on the job's record and in every view)."""
    if len(metadata) > MAX_METADATA_PAIRS:
        raise InvalidRequestError(f"metadata has at most {MAX_METADATA_PAIRS} pairs.", param="metadata")
    for name, value in metadata.items():
        if len(name) > MAX_METADATA_KEY or len(value) > MAX_METADATA_VALUE:
            raise InvalidRequestError(
                f"metadata keys have at most {MAX_METADATA_KEY} characters and values {MAX_METADATA_VALUE}.",
                param="metadata",
            )
    return dict(metadata)


def check_result_subject(subjects: Subjects, subject: str, caller: Caller) -> str:
    """A job's result subject, or a 400: a subject one can publish to under `<p>.batch.out.`, and in no namespace
    (`<p>.batch.out.ns.<team|key>.<id>.…`) but the key's or its team's."""
    problem = subjects.result_subject_problem(subject) if subject else ""
    if problem:
        raise InvalidRequestError(f"result_subject {problem}.", param="result_subject")
    if subject and not may_notify(subjects, subject, caller):
        raise InvalidRequestError(
            "result_subject is in the namespace of another team or key than the job's.", param="result_subject"
        )
    return subject


def item_token(job_id: str, item_id: str) -> str:
    """The subject token and request id of one item of one job: the same item always gets the same one, so
    its result is stored once and its request record is one row however often it is delivered."""
    return hashlib.sha256(f"{job_id}\x00{item_id}".encode()).hexdigest()[:32]


def output_file_id(job_id: str, which: str) -> str:
    """The id of a job's output (`o`) or error (`e`) file: derived from the job, so finishing twice writes one."""
    return f"file-{hashlib.sha256(f'{job_id}/{which}'.encode()).hexdigest()[:24]}"
