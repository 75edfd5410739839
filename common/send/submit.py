"""``POST /messages`` end to end: accept (PostgreSQL), then hand over (Redis) or send inline."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import redis

from common import metrics
from common.analytics import Event, emit
from common.analytics.events import status_events
from common.limits.sends import send_limits
from common.media import check_media_with_settings
from common.queue import QueueItem, SenderLimit
from common.redis_client import RedisUnavailable
from common.runtime import Runtime
from common.send.models import SendRequest
from common.send.service import Accepted, accept, store_final_response
from common.wake import wake_consumers
from common.web import Reply

logger = logging.getLogger("koinonia.send")


def submit(rt: Runtime, church_id: str, request: SendRequest, payload: Any, idempotency_key: str | None) -> Reply:
    accepted = accept(
        rt.pool, church_id, request, raw_payload=payload, idempotency_key=idempotency_key,
        admit=send_limits(rt.redis, rt.settings),  # rate limits and quota: 429/402 before anything is written
        media_check=lambda urls: check_media_with_settings(urls, rt.settings),  # an MMS's media: 422 or warnings
    )  # fmt: skip
    if accepted.replayed:
        _log_accepted(church_id, accepted.response, "replayed")
        return Reply(accepted.response, 202, {"Idempotent-Replayed": "true"})
    emit(rt, [Event.broadcast(accepted.broadcast_id)])  # analytics (common/analytics): best effort, never raises
    metrics.count_accepted(accepted)  # MessagesAccepted (common/metrics)
    if rt.settings.enable_queues and _enqueue(rt, accepted):
        _log_accepted(church_id, accepted.response, accepted.response["mode"])
        return Reply(accepted.response, 202)
    if not accepted.queued_ids:
        # Scheduled sends (send_at, or held for quiet hours) wait in PostgreSQL (status 'scheduled',
        # next_attempt_at = when): the retry-scheduler releases them when due, with or without Redis.
        _log_accepted(church_id, accepted.response, accepted.response["mode"])
        return Reply(accepted.response, 202)
    response = _send_inline(rt, accepted)
    _log_accepted(church_id, response, "inline")
    return Reply(response, 202)


def _log_accepted(church_id: str, response: dict[str, Any], mode: str) -> None:
    """One line per accepted request, with ids and counts only (never a number or a text). ``request_id`` is
    added by the formatter; ``correlation_id`` is what the messages carry (a replay's: the first request's)."""
    counts = response.get("counts") or {}
    logger.info(
        "send accepted",
        extra={"fields": {
            "correlation_id": response.get("correlation_id"), "church_id": church_id,
            "broadcast_id": response.get("broadcast_id"), "channel": response.get("channel"), "mode": mode,
            "messages": counts.get("accepted", 0) + counts.get("suppressed", 0), "suppressed": counts.get("suppressed", 0),
        }},
    )  # fmt: skip


def enqueue_accepted(rt: Runtime, accepted: Accepted) -> bool:
    """Hand an accepted request's rows to Redis; ``False`` if Redis is off or failed (rows stay in PostgreSQL)."""
    return rt.settings.enable_queues and _enqueue(rt, accepted)


def _enqueue(rt: Runtime, accepted: Accepted) -> bool:
    due: list[tuple[str, int | None]] = [(mid, None) for mid in accepted.queued_ids]
    due += [(mid, int(at.timestamp() * 1000)) for mid, at in accepted.scheduled]
    if not due:
        return True
    items = [
        QueueItem(
            message_id=mid,
            church_id=accepted.church_id,
            lane=accepted.lane,
            sender=accepted.sender.phone,
            channel=accepted.channel,
            due_at_ms=due_ms,
        )
        for mid, due_ms in due
    ]
    rate = accepted.sender.mms_per_second if accepted.channel == "mms" else accepted.sender.sms_per_second
    # The number's rate on this channel, in the bucket of (channel, number): its SMS and MMS are limited apart.
    limits = {(accepted.channel, accepted.sender.phone): SenderLimit.for_rate(rate)}
    try:
        rt.redis.call(lambda _client: rt.queue.enqueue(items, limits))
    except (RedisUnavailable, redis.RedisError) as exc:
        # Accepted rows are safe in PostgreSQL; deliver them inline instead of failing the request.
        logger.warning("enqueue failed, sending inline", extra={"fields": {"error": type(exc).__name__}})
        return False
    wake_consumers(rt)
    return True


def _send_inline(rt: Runtime, accepted: Accepted) -> dict[str, Any]:
    from common.inline import deliver_inline

    rate = accepted.sender.mms_per_second if accepted.channel == "mms" else accepted.sender.sms_per_second
    ids = accepted.queued_ids

    async def run() -> dict[str, str]:
        async with rt.carrier(max_connections=min(50, max(1, len(ids)))) as carrier, rt.mail() as mail:
            return await deliver_inline(
                rt.pool, carrier, ids, budget_s=rt.settings.inline_budget_s, per_second=rate, lease_s=rt.settings.lease_s,
                mail=mail,
            )  # fmt: skip

    statuses = asyncio.run(run()) if ids else {}
    emit(rt, status_events(statuses))
    response = dict(accepted.response)
    response["mode"] = "inline"
    response["recipients"] = [
        {**entry, "status": statuses.get(entry["message_id"], entry["status"])} for entry in response["recipients"]
    ]
    store_final_response(rt.pool, accepted.broadcast_id, response)
    return response
