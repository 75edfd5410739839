"""``POST /privacy/deletions`` (send function): a church erases one of its people, by phone number.

    POST /privacy/deletions   {"phone": "+13125550142"}   -> 202 {"erased", "counts", "suppression_kept"}

Church-scoped: the church is the caller's (its API key); only that church's data about the number is
erased (the same person in another church is that church's to erase). Whole-church deletion is an
operator's job (``koinonia delete church``), never an HTTP call. The answer never repeats the number.
The work is done when the answer comes (202: the request is accepted and carried out; a repeat finds
nothing left and answers ``"erased": false``).
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from common.privacy.deletion import delete_person, person_number
from common.request_models import StrictModel, parse_model
from common.runtime import Runtime
from common.web import Reply

DELETION_422 = ("invalid_phone",)


class DeletionRequest(StrictModel):
    """Erase everything this church holds about one person."""

    phone: str = Field(
        min_length=1, max_length=40, description="the person's number, in any common format (stored as E.164)"
    )


def deletion_request(rt: Runtime, church_id: str, actor: str, payload: Any) -> Reply:
    body = parse_model(DeletionRequest, payload)
    phone = person_number(body.phone)  # 422 invalid_phone, before anything is touched
    report = delete_person(rt.pool, church_id, phone, actor=actor, redis=rt.redis if rt.settings.enable_queues else None)
    return Reply(report.as_dict(), 202)
