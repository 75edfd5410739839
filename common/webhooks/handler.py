"""``POST /webhooks/telnyx``: verify, de-duplicate, apply, answer 2xx, all well inside Telnyx's 2 s.

1. The signature is checked on the raw bytes before anything is parsed (common/webhooks/signature.py);
   nothing is stored for a request that fails it.
2. One transaction: the event id goes into ``webhook_events`` (a duplicate ``data.id`` stops here and
   answers 200, changing nothing), then the event is applied: a delivery receipt moves its message
   forward (common/messages/receipts.py), an inbound text lands in its conversation with its keyword
   handled (common/conversations/inbound.py).
3. After COMMIT a keyword reply is handed to Redis; if Redis is off or down it stays ``queued`` in
   PostgreSQL, where the retry-scheduler's reconcile (or its inline mode) picks it up. What changed goes
   to the analytics stream (common/analytics/events.py: best effort, never fails the answer).

A failure inside 2 rolls everything back and answers 5xx, so Telnyx delivers the event again.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from common import analytics, metrics
from common.api_errors import ApiError, PayloadTooLarge
from common.conversations.inbound import InboundResult, record_inbound
from common.db.pool import Connection
from common.ids import uuid7
from common.messages import receipts
from common.runtime import Runtime
from common.send.submit import enqueue_accepted
from common.web import Reply, parse_json
from common.webhooks.events import Event, Inbound, Other, Receipt, parse_event
from common.webhooks.signature import SignatureRejected, verify

logger = logging.getLogger("koinonia.webhooks")

max_webhook_bytes = 256 * 1024  # a Telnyx event is a few KB; an MMS with ten media descriptions well under this


class _Rejected(ApiError):
    def __init__(self, exc: SignatureRejected) -> None:
        super().__init__(exc.code, exc.message)
        self.status = exc.status


def handle(rt: Runtime, headers: Mapping[str, str], body: bytes) -> Reply:
    if len(body) > max_webhook_bytes:
        raise PayloadTooLarge("payload_too_large", f"a webhook body is at most {max_webhook_bytes:,} bytes")
    try:
        verify(headers, body, rt.settings.telnyx_public_key)
    except SignatureRejected as exc:
        logger.warning("webhook refused", extra={"fields": {"code": exc.code, "status": exc.status}})
        raise _Rejected(exc) from None
    # The same strict reader as every body (common/web.py): no NUL or lone surrogate reaches PostgreSQL (a 422
    # instead of a 500 that Telnyx would redeliver forever), no unbounded nesting, no duplicate keys.
    payload: Any = parse_json(body)
    event = parse_event(payload)
    if event is None:
        return Reply({"result": "ignored"})
    result = _apply(rt, event)
    analytics.emit(rt, _changed(event, result))
    if isinstance(result, InboundResult) and result.reply is not None:
        metrics.count_accepted(result.reply)  # a keyword reply's message: MessagesAccepted, as a send's
    if isinstance(result, InboundResult) and result.reply is not None and not enqueue_accepted(rt, result.reply):
        logger.info("keyword reply left for the retry-scheduler (queues off or Redis down)")
    return Reply({"result": "applied" if result is not None else "duplicate", "event_id": event.event_id})


def _apply(rt: Runtime, event: Event) -> InboundResult | bool | None:
    """Apply once; ``None`` for a duplicate event."""
    with rt.pool.transaction() as conn:
        if not _first_delivery(conn, event):
            return None
        if isinstance(event, Receipt):
            receipts.lock_message(conn, event.message_id)
            # The message the receipt moved forward now, with its correlation id (none: older news, or its
            # message not ready yet).
            recorded = receipts.record(conn, event)  # news: the carrier says more than before (so: once per state)
            moved = receipts.apply_one_moved(conn, event.provider_message_id) if recorded else {}
        elif isinstance(event, Inbound):
            inbound = record_inbound(conn, event, new_id=uuid7)
            # Ids only: the member's number and text stay out of logs. A keyword reply's correlation id is this
            # webhook's request id (common/log_context.py).
            logger.info(
                "inbound text",
                extra={"fields": {"event_id": event.event_id, "provider_message_id": event.provider_message_id,
                                  "known_number": inbound.church_id is not None, "church_id": inbound.church_id,
                                  "conversation_id": inbound.conversation_id, "text_id": inbound.text_id,
                                  "keyword": inbound.kind, "flagged": inbound.flagged, "changed": inbound.changed,
                                  "reply_broadcast_id": inbound.reply.broadcast_id if inbound.reply else None}},
            )  # fmt: skip
            return inbound
        else:
            assert isinstance(event, Other)
            return True
    if recorded:
        metrics.count_receipt(event.status)  # after COMMIT: MessagesDelivered, MessagesFailed (common/metrics)
    for message_id, correlation_id in moved.items():  # after COMMIT: only what really changed
        logger.info(
            "delivery receipt applied",
            extra={"fields": {"message_id": message_id, "correlation_id": correlation_id, "status": str(event.status),
                              "provider_message_id": event.provider_message_id, "event_id": event.event_id}},
        )  # fmt: skip
    return bool(moved)


def _first_delivery(conn: Connection, event: Event) -> bool:
    event_type = event.event_type if isinstance(event, Receipt | Other) else "message.received"
    rows = conn.run(
        "INSERT INTO webhook_events (event_id, event_type, occurred_at) VALUES (:id, :type, :at)"
        " ON CONFLICT (event_id) DO NOTHING RETURNING event_id",
        id=event.event_id, type=event_type, at=event.occurred_at,
    )  # fmt: skip
    return bool(rows)


def _changed(event: Event, result: InboundResult | bool | None) -> list[analytics.Event]:
    """The analytics events of an applied webhook (none for a duplicate or a receipt that moved nothing)."""
    if isinstance(event, Receipt) and result is True:
        if event.message_id is not None:
            return [analytics.Event.messages(event.status, [event.message_id])]
        return [analytics.Event.provider(event.status, [event.provider_message_id])]
    if not isinstance(result, InboundResult) or result.church_id is None:
        return []
    changed = [analytics.Event.reply(result.text_id)] if result.text_id else []
    if result.kind == "opt_out" and result.conversation_id:  # recorded (and audited) now, even if nothing changed
        changed.append(analytics.Event.conversation(analytics.EventType.opted_out, result.conversation_id))
    if result.reply is not None:
        changed.append(analytics.Event.broadcast(result.reply.broadcast_id))
    return changed
