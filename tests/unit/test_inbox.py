"""The per-process reply inbox: replies reach their request's queue in order; a verdict can be noted instead."""

from __future__ import annotations

from nats.aio.client import Client
from nats.aio.msg import Msg

from shared.inbox import Inbox
from shared.schemas.chat import GuardSummary, Outcome, Reply, Result, Verdict
from shared.subjects import Subjects

SUBJECTS = Subjects("t")
VERDICT = Verdict(GuardSummary(policy="default", action="allow", scan_us=12, replica="guard-1"))
RESULT = Result(outcome=Outcome(), body=b"{}")


def message(inbox: Inbox, request_id: str, reply: Reply) -> Msg:
    return Msg(Client(), subject=f"{inbox.prefix}.{request_id}", data=SUBJECTS.replies.encode(reply))


async def test_a_verdict_goes_to_its_note_and_the_result_to_the_queue() -> None:
    inbox = Inbox(SUBJECTS)
    noted: list[Verdict] = []
    _, queue = inbox.open("r1", noted.append)
    await inbox._on_msg(message(inbox, "r1", VERDICT))
    await inbox._on_msg(message(inbox, "r1", RESULT))
    assert noted == [VERDICT]
    assert queue.qsize() == 1 and queue.get_nowait() == RESULT


async def test_without_a_note_the_verdict_is_queued_in_order() -> None:
    inbox = Inbox(SUBJECTS)
    _, queue = inbox.open("r1")
    await inbox._on_msg(message(inbox, "r1", VERDICT))
    await inbox._on_msg(message(inbox, "r1", RESULT))
    assert [queue.get_nowait(), queue.get_nowait()] == [VERDICT, RESULT]


async def test_a_closed_request_takes_no_more_replies() -> None:
    inbox = Inbox(SUBJECTS)
    noted: list[Verdict] = []
    _, queue = inbox.open("r1", noted.append)
    inbox.close("r1")
    await inbox._on_msg(message(inbox, "r1", VERDICT))
    await inbox._on_msg(message(inbox, "r1", RESULT))
    assert noted == [] and queue.empty() and len(inbox) == 0
