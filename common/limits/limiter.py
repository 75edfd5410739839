"""Rate limits as GCRA token buckets: atomic in Redis (``scripts/take.lua``), in-process when Redis is down.

A ``Rate`` is ``limit`` tokens per ``period_s`` with a ``burst`` (default: the whole limit, so a quiet
client may spend its allowance at once). ``take`` answers allowed or not, with ``retry_after_s`` (the
wait until ``cost`` tokens are there) for a ``Retry-After`` header.

Redis keeps one value per bucket (its theoretical arrival time) with a TTL, so idle buckets vanish.
When Redis is unavailable (breaker open, timeout) the same algorithm runs in this process: limits then
hold per process instead of per deployment, which is the right failure mode (still bounded, never
failing the request because Redis is away).
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from functools import cache
from importlib import resources

import redis

from common.redis_client import RedisGate, RedisUnavailable


@dataclass(frozen=True)
class Rate:
    limit: int
    period_s: float
    burst: int | None = None

    @property
    def emission_ms(self) -> float:
        return self.period_s * 1000.0 / self.limit

    @property
    def capacity(self) -> int:
        return self.burst if self.burst is not None else self.limit


@dataclass(frozen=True)
class Decision:
    allowed: bool
    retry_after_s: float  # 0 when allowed
    remaining: int  # tokens left after this take (what is left of the allowance)

    @property
    def retry_after_header(self) -> str:
        return str(max(1, math.ceil(self.retry_after_s)))


@cache
def _script() -> str:
    return resources.files("common.limits").joinpath("scripts/take.lua").read_text(encoding="utf-8")


class Limiter:
    def __init__(self, gate: RedisGate | None) -> None:
        self.gate = gate
        self._local: dict[str, float] = {}
        self._lock = threading.Lock()

    def take(self, bucket: str, rate: Rate, cost: int = 1) -> Decision:
        """Spend ``cost`` tokens of ``bucket`` (a name such as ``send:<church id>``) at ``rate``."""
        if cost > rate.capacity:
            return Decision(False, rate.period_s, rate.capacity)  # can never fit: refuse, say when it refills
        gate = self.gate
        if gate is not None:
            key = gate.key("limit", bucket)
            try:
                allowed, retry_ms, remaining = gate.call(
                    lambda client: client.eval(_script(), 1, key, rate.emission_ms, rate.capacity, cost)
                )
                return Decision(bool(allowed), int(retry_ms) / 1000.0, max(0, int(remaining)))
            except (RedisUnavailable, redis.RedisError):
                pass  # below: the same bucket, in this process
        return self._take_local(bucket, rate, cost)

    def _take_local(self, bucket: str, rate: Rate, cost: int) -> Decision:
        emission = rate.emission_ms
        with self._lock:
            now = time.monotonic() * 1000.0
            tat = max(self._local.get(bucket, now), now)
            new_tat = tat + cost * emission
            allow_at = new_tat - rate.capacity * emission
            if allow_at > now:
                return Decision(False, (allow_at - now) / 1000.0, int((rate.capacity * emission - (tat - now)) // emission))
            self._local[bucket] = new_tat
            if len(self._local) > 100_000:  # idle buckets are full buckets: forget them
                self._local = {k: v for k, v in self._local.items() if v > now}
            return Decision(True, 0.0, int((rate.capacity * emission - (new_tat - now)) // emission))
