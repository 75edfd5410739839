"""The Redis message queue: lanes, per-church fairness, sender and account rate limits, leases.

PostgreSQL holds every message and its status; this queue only holds "which id to look at next". Anything
it loses, reconcile re-enqueues from PostgreSQL (``holds`` tells it what is missing; enqueue is
idempotent). Every operation is one Lua script (``scripts/*.lua``), atomic, one round trip per batch.

Key layout (``{p}`` = the prefix's hash tag: every key sits in one Redis Cluster slot)::

    {p}:q:ready:<lane>:<channel>:<church>:<sender>  LIST    message ids, FIFO (reclaim pushes to the front)
    {p}:q:ring:<lane>:<channel>                     ZSET    queue name -> eligible since (epoch us);
                                                            lowest goes next; served -> to the back
    {p}:q:msg                                       HASH    id -> "<state>:<queue name>": the dedup set and
                                                            where each id is (r ready | d delayed | <seq> inflight)
    {p}:q:delayed                                   ZSET    id -> due (epoch ms)
    {p}:q:inflight                                  ZSET    "<seq>:<id>" -> lease deadline (epoch ms)
    {p}:q:limits                                    HASH    "<channel>|<sender>" -> "<per_second> <burst>" (config)
    {p}:q:bucket:<channel>|<sender>                 STRING  sender token bucket per channel (GCRA), expires when idle
    {p}:q:account:<channel>                         STRING  account-wide bucket per channel, expires when idle
    {p}:q:seq                                       STRING  lease counter (one INCR per dequeue)
    {p}:q:wake                                      LIST    wake tokens for BLPOP (<= wake_tokens, expires)

    queue name = <lane>:<channel>:<church>:<sender>      lanes: conv before bulk
    sender id  = <channel>|<sender>   a number's SMS and MMS have their own rates, so their own buckets
    message path:  enqueue --> ready --dequeue--> inflight --ack--> (gone)
                     |           ^                 |  |
                     |           +---reclaim-------+  +--retry_later--> delayed
                     +--(due later)--> delayed --promote_due--> ready (back)

An acked message leaves every structure; empty lists and ring entries vanish; buckets and the wake
list expire when idle. What stays is bounded by the backlog plus config (limits hash, seq counter).
"""

from __future__ import annotations

from common.queue.aqueue import AsyncMessageQueue
from common.queue.keys import QueueKeys, parse_queue_name, queue_name, sender_id
from common.queue.queue import MessageQueue
from common.queue.types import (
    CHANNELS,
    LANES,
    Channel,
    Dequeued,
    Lane,
    Lease,
    QueueConfig,
    QueueDepths,
    QueueItem,
    SenderKey,
    SenderLimit,
)

__all__ = [
    "CHANNELS",
    "LANES",
    "AsyncMessageQueue",
    "Channel",
    "Dequeued",
    "Lane",
    "Lease",
    "MessageQueue",
    "QueueConfig",
    "QueueDepths",
    "QueueItem",
    "QueueKeys",
    "SenderKey",
    "SenderLimit",
    "parse_queue_name",
    "queue_name",
    "sender_id",
]
