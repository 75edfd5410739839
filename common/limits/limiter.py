"""Rate limits as GCRA token buckets: atomic in Redis (``scripts/*.lua``), in-process when Redis is down.

A ``Rate`` is ``limit`` tokens per ``period_s`` with a ``burst`` (default: the whole limit, so a quiet
client may spend its allowance at once). ``take`` answers allowed or not, with ``retry_after_s`` (the
wait until ``cost`` tokens are there) for a ``Retry-After`` header.

``admit`` is one request's whole admission in one round trip: several buckets and, optionally, a draw on
a cached allowance (a plan's remaining segments, ``common.billing.quota``), all or nothing: nothing is
charged unless everything fits. The allowance is cached in Redis for a short TTL and decremented by
every admitted draw; when it is not cached, ``Draw.load`` reads the source of truth (PostgreSQL) and a
second call caches it (so a miss costs two round trips and one query, once per TTL).

Redis keeps one value per bucket (its theoretical arrival time) with a TTL, so idle buckets vanish.
When Redis is unavailable (breaker open, timeout) the same algorithm runs in this process: limits then
hold per process instead of per deployment, which is the right failure mode (still bounded, never
failing the request because Redis is away), and an allowance is read from its source on every draw.
With ``ENABLE_QUEUES=false`` (Redis off: never touched) the limiter is in-process from the start.

``empty_for`` is local knowledge without a round trip: how long this process's own last take found the
bucket empty for. The failed-authentication guard uses it to refuse a blocked address before any work.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import redis

from common.redis_client import RedisGate, RedisUnavailable

logger = logging.getLogger("koinonia.limits")

NO_ALLOWANCE = "no_allowance"  # Admission.refused_by: the draw found no allowance at all
ALLOWANCE_SHORT = "allowance_short"  # Admission.refused_by: the draw is larger than what remains

_MAX_LOCAL = 100_000  # in-process buckets/holds kept before idle ones (full buckets) are forgotten


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


def retry_after_header(seconds: float) -> str:
    """``Retry-After`` as HTTP wants it: whole seconds, at least 1."""
    return str(max(1, math.ceil(seconds)))


@dataclass(frozen=True)
class Decision:
    allowed: bool
    retry_after_s: float  # 0 when allowed
    remaining: int  # tokens left after this take (what is left of the allowance)
    next_token_s: float = 0.0  # wait until one more token is there (0 while one is left)

    @property
    def retry_after_header(self) -> str:
        return retry_after_header(self.retry_after_s)


@dataclass(frozen=True)
class Take:
    """``cost`` tokens from ``bucket`` (a name such as ``send:<church id>``) at ``rate``."""

    bucket: str
    rate: Rate
    cost: int = 1


@dataclass(frozen=True)
class Allowance:
    """What is left of a metered allowance (a plan's segments in its current period)."""

    remaining: int
    weight: int  # what one weighted unit draws (an MMS segment: the plan's mms_weight); >= 1
    renews_at: int  # epoch seconds: when the period ends and the allowance starts afresh


@dataclass(frozen=True)
class Draw:
    """A request's draw on a cached allowance: ``units + weighted_units * allowance.weight``."""

    key: str  # cache name, such as ``quota:<church id>``
    units: int
    weighted_units: int
    ttl_s: float  # how long a value read by ``load`` is trusted (never past its ``renews_at``)
    load: Callable[[], Allowance | None]  # the source of truth; ``None``: there is no allowance at all

    def need(self, allowance: Allowance) -> int:
        return self.units + self.weighted_units * allowance.weight


@dataclass(frozen=True)
class Admission:
    allowed: bool
    refused_by: str | None = None  # the refusing bucket's name, ALLOWANCE_SHORT or NO_ALLOWANCE
    retry_after_s: float = 0.0  # a refusing bucket: the wait until it holds the cost
    bucket_left: int = 0  # a refusing bucket: the tokens it holds now
    allowance: Allowance | None = None  # after the draw if admitted, before it if refused
    need: int = 0  # what the request draws on the allowance

    @property
    def retry_after_header(self) -> str:
        return retry_after_header(self.retry_after_s)


@cache
def _script(name: str) -> str:
    return resources.files("common.limits").joinpath(f"scripts/{name}.lua").read_text(encoding="utf-8")


class Limiter:
    def __init__(self, gate: RedisGate | None) -> None:
        self.gate = gate
        self._local: dict[str, float] = {}  # bucket -> TAT (ms, monotonic clock)
        self._empty_until: dict[str, float] = {}  # bucket -> monotonic s: found empty by this process
        self._lock = threading.Lock()
        # EVALSHA (falling back to EVAL once after a Redis restart), not the whole script per call.
        self._take_script = gate.client.register_script(_script("take")) if gate is not None else None
        self._admit_script = gate.client.register_script(_script("admit")) if gate is not None else None

    # one bucket ---------------------------------------------------------------------------------------

    def take(self, bucket: str, rate: Rate, cost: int = 1) -> Decision:
        """Spend ``cost`` tokens of ``bucket`` (a name such as ``send:<church id>``) at ``rate``."""
        if cost > rate.capacity:
            return Decision(False, rate.period_s, rate.capacity)  # can never fit: refuse, say when it refills
        decision = self._take_redis(bucket, rate, cost)
        if decision is None:
            decision = self._take_local(bucket, rate, cost)
        if decision.next_token_s > 0:
            self._remember_empty(bucket, decision.next_token_s)
        return decision

    @property
    def has_empty_buckets(self) -> bool:
        """Whether this process remembers any bucket as empty (else ``empty_for`` is 0 for every bucket)."""
        return bool(self._empty_until)

    def empty_for(self, bucket: str) -> float:
        """Seconds this process knows ``bucket`` to stay empty (from its own last take; no round trip)."""
        until = self._empty_until.get(bucket)
        if until is None:
            return 0.0
        left = until - time.monotonic()
        if left <= 0:
            with self._lock:
                if self._empty_until.get(bucket) == until:
                    del self._empty_until[bucket]
            return 0.0
        return left

    def _take_redis(self, bucket: str, rate: Rate, cost: int) -> Decision | None:
        gate, script = self.gate, self._take_script
        if gate is None or script is None:
            return None
        key = gate.key("limit", bucket)
        try:
            reply = gate.call(lambda client: script(keys=[key], args=[rate.emission_ms, rate.capacity, cost], client=client))
        except RedisUnavailable:
            return None
        except redis.RedisError as exc:
            logger.warning("rate limit script failed; limiting in this process", extra={"fields": {"error": type(exc).__name__}})
            return None
        allowed, retry_ms, remaining, next_ms = (int(v) for v in reply)
        return Decision(bool(allowed), retry_ms / 1000.0, max(0, remaining), next_ms / 1000.0)

    def _take_local(self, bucket: str, rate: Rate, cost: int) -> Decision:
        emission, burst = rate.emission_ms, rate.capacity * rate.emission_ms
        with self._lock:
            now = time.monotonic() * 1000.0
            tat = max(self._local.get(bucket, now), now)
            new_tat = tat + cost * emission
            allow_at = new_tat - burst
            if allow_at > now:
                next_ms = max(0.0, tat + emission - burst - now)
                return Decision(False, (allow_at - now) / 1000.0, int((burst - (tat - now)) // emission), next_ms / 1000.0)
            self._local[bucket] = new_tat
            self._forget_idle(now)
        next_ms = max(0.0, new_tat + emission - burst - now)
        return Decision(True, 0.0, int((burst - (new_tat - now)) // emission), next_ms / 1000.0)

    def _remember_empty(self, bucket: str, seconds: float) -> None:
        with self._lock:
            now = time.monotonic()
            self._empty_until[bucket] = now + seconds
            if len(self._empty_until) > _MAX_LOCAL:
                self._empty_until = {k: v for k, v in self._empty_until.items() if v > now}

    def _forget_idle(self, now_ms: float) -> None:
        if len(self._local) > _MAX_LOCAL:  # idle buckets are full buckets: forget them (caller holds the lock)
            self._local = {k: v for k, v in self._local.items() if v > now_ms}

    # one request: several buckets and an allowance, all or nothing --------------------------------------

    def admit(self, takes: Sequence[Take], draw: Draw | None = None) -> Admission:
        """Charge every take and the draw, or none of them; one round trip when the allowance is cached."""
        takes = [t for t in takes if t.cost > 0]
        for t in takes:
            if t.cost > t.rate.capacity:  # can never fit: refuse, say when the whole bucket is there
                return Admission(False, t.bucket, t.rate.period_s, t.rate.capacity)
        loaded: list[Allowance | None] = []

        def load() -> Allowance | None:
            if not loaded:
                assert draw is not None
                loaded.append(draw.load())
            return loaded[0]

        admission = self._admit_redis(takes, draw, load)
        if admission is None:
            admission = self._admit_local(takes, draw, load() if draw is not None else None)
        return admission

    def _admit_redis(self, takes: list[Take], draw: Draw | None, load: Callable[[], Allowance | None]) -> Admission | None:
        gate, script = self.gate, self._admit_script
        if gate is None or script is None:
            return None
        keys = [gate.key("limit", t.bucket) for t in takes]
        args: list[Any] = [len(takes), 0, 0, 0, 0, 0, 0, 0, 0]
        if draw is not None:
            keys.append(gate.key("limit", draw.key))
            args[1:4] = [1, draw.units, draw.weighted_units]
        for t in takes:
            args += [t.rate.emission_ms, t.rate.capacity, t.cost]
        try:
            reply = [int(v) for v in gate.call(lambda client: script(keys=keys, args=args, client=client))]
            if reply[0] == 1 and draw is not None:  # not cached: read the source, cache it in the same call
                allowance = load()
                ttl_ms = draw.ttl_s * 1000.0
                if allowance is None:
                    args[4:9] = [1, 0, 0, 0, max(1, int(ttl_ms))]
                else:
                    until_ms = (allowance.renews_at - time.time()) * 1000.0  # a new period starts afresh
                    ttl = max(1, int(min(ttl_ms, until_ms)))
                    args[4:9] = [1, max(0, allowance.remaining), allowance.weight, allowance.renews_at, ttl]
                reply = [int(v) for v in gate.call(lambda client: script(keys=keys, args=args, client=client))]
        except RedisUnavailable:
            return None
        except redis.RedisError as exc:
            logger.warning("admission script failed; limiting in this process", extra={"fields": {"error": type(exc).__name__}})
            return None
        code = reply[0]
        if code == 0:
            allowance = Allowance(reply[1], reply[2], reply[3]) if draw is not None else None
            return Admission(True, allowance=allowance, need=draw.need(allowance) if draw and allowance else 0)
        if code == 2:
            return Admission(False, NO_ALLOWANCE)
        if code == 3 and draw is not None:
            allowance = Allowance(reply[1], reply[2], reply[3])
            return Admission(False, ALLOWANCE_SHORT, allowance=allowance, need=draw.need(allowance))
        if code == 4:
            take = takes[reply[1] - 1]
            return Admission(False, take.bucket, reply[2] / 1000.0, max(0, reply[3]))
        raise RuntimeError(f"admit.lua answered {reply!r}")  # a bug in the script, not a client error

    def _admit_local(self, takes: list[Take], draw: Draw | None, allowance: Allowance | None) -> Admission:
        need = 0
        if draw is not None:
            if allowance is None or allowance.weight <= 0:
                return Admission(False, NO_ALLOWANCE)
            need = draw.need(allowance)
            if need > allowance.remaining:
                return Admission(False, ALLOWANCE_SHORT, allowance=allowance, need=need)
        with self._lock:
            now = time.monotonic() * 1000.0
            new_tats: dict[str, float] = {}
            worst: tuple[float, Take, int] | None = None
            for t in takes:
                emission, burst = t.rate.emission_ms, t.rate.capacity * t.rate.emission_ms
                tat = max(self._local.get(t.bucket, now), now)
                new_tat = tat + t.cost * emission
                wait = new_tat - burst - now
                if wait > 0 and (worst is None or wait > worst[0]):
                    worst = (wait, t, int((burst - (tat - now)) // emission))
                new_tats[t.bucket] = new_tat
            if worst is not None:
                wait, take, left = worst
                return Admission(False, take.bucket, wait / 1000.0, max(0, left))
            self._local.update(new_tats)
            self._forget_idle(now)
        if draw is None or allowance is None:
            return Admission(True)
        after = Allowance(allowance.remaining - need, allowance.weight, allowance.renews_at)
        return Admission(True, allowance=after, need=need)


_current: tuple[RedisGate, bool, Limiter] | None = None
_current_lock = threading.Lock()


def limiter_for(gate: RedisGate, *, use_redis: bool = True) -> Limiter:
    """The process's limiter for ``gate`` (the runtime's Redis): its in-process state lives as long as it.

    ``use_redis=False`` (``ENABLE_QUEUES=false``: Redis is off, never to be touched): in-process buckets only.
    """
    global _current
    current = _current
    if current is not None and current[0] is gate and current[1] == use_redis:
        return current[2]
    with _current_lock:
        if _current is None or _current[0] is not gate or _current[1] != use_redis:
            _current = (gate, use_redis, Limiter(gate if use_redis else None))
        return _current[2]
