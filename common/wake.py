"""Waking a consumer when work arrives, so a message never waits for the next scheduled tick.

Locally (and wherever consumers run continuously) the queue's own wake list does it: ``enqueue`` pushes
to it and idle consumers block on it. In the cloud no consumer may be running: with ``WAKE_QUEUE_URL``
set, ``send`` also puts one message on that SQS queue, whose event source invokes queue-consume. At most
one wake per second is sent across all ``send`` instances (a Redis ``SET NX PX`` gate), since one
invocation drains everything that is ready.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

from common.redis_client import RedisUnavailable
from common.runtime import Runtime

logger = logging.getLogger("koinonia.wake")

wake_gate_ms = 1000


def wake_consumers(rt: Runtime) -> bool:
    """Send a cloud wake-up if configured and none was sent in the last second; True if sent."""
    url = rt.settings.wake_queue_url
    if not url:
        return False
    try:
        first = rt.redis.call(lambda c: c.set(rt.redis.key("wake-gate"), "1", nx=True, px=wake_gate_ms))
    except RedisUnavailable:
        first = True  # better a spare invocation than a message waiting a minute
    if not first:
        return False
    try:
        _sqs().send_message(QueueUrl=url, MessageBody='{"wake": true}')
    except Exception as exc:  # the scheduled tick still drains the queue; never fail a send over this
        logger.warning("wake-up not sent", extra={"fields": {"error": type(exc).__name__}})
        return False
    return True


@functools.cache
def _sqs() -> Any:
    import boto3

    return boto3.client("sqs")
