"""``koinonia check redis``: can this deployment really use the Redis in ``REDIS_URL``, and is it set up for a queue?

A PING proves little: a replica answers PING and refuses every write, a full Redis answers PING and
refuses SET, a managed Redis may have renamed a command the queue needs. So the check runs one command
of each family the queue and the rate limits rely on (strings with expiry, deletes, counters, lists, and
a Lua script, since every queue operation is one) on throwaway keys of its own (``{prefix}:check:<random>:*``:
the deployment's hash slot, nothing of the queue's is touched), and deletes them at the end, whatever
happened (each also carries a 60-second TTL, for the case where the connection dies before the cleanup).

Each step prints ``ok`` or ``FAILED`` with its latency; each failure a diagnosis that says what to change
(``redis_diagnosis``). When the connection itself is unusable (refused, timeout, NOAUTH...) the remaining
steps are skipped rather than failed five more times. Then what the server says about itself: version,
``maxmemory-policy`` (anything but ``noeviction`` lets a full Redis drop queue entries: PostgreSQL
still recovers them, but late) and persistence (informational: Redis is transport, never the truth).

The commands run with a timeout of at least ``min_timeout_ms`` (the functions' own ``REDIS_TIMEOUT_MS`` is
100 ms: right for a request path that falls back inline, too tight to tell a slow network from a dead
one); a step slower than ``REDIS_TIMEOUT_MS`` is reported, since the functions would time out on it.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import redis

from common.checks.redis_diagnosis import Diagnosis, diagnose
from common.checks.redis_target import RedisTarget
from common.config import Settings
from common.redis_client import RedisGate

Say = Callable[[str], None]

min_timeout_ms = 1000
key_ttl_s = 60


class Mismatch(Exception):
    """Redis answered, but not what the command must return."""

    def __init__(self, problem: str, fix: str) -> None:
        super().__init__(problem)
        self.diagnosis = Diagnosis(problem, fix)


@dataclass(frozen=True)
class CheckKeys:
    """The check's own keys, all under one random name in the deployment's hash slot."""

    base: str

    @property
    def text(self) -> str:
        return f"{self.base}:text"

    @property
    def counter(self) -> str:
        return f"{self.base}:counter"

    @property
    def items(self) -> str:
        return f"{self.base}:list"

    @property
    def all(self) -> tuple[str, str, str]:
        return (self.text, self.counter, self.items)


@dataclass(frozen=True)
class StepResult:
    name: str
    status: Literal["ok", "FAILED", "skipped"]
    ms: float = 0.0
    detail: str = ""
    diagnosis: Diagnosis | None = None
    answered: bool = False  # FAILED on a wrong answer (so the step's writes went through), not on an error


Step = Callable[[redis.Redis, CheckKeys], str]


def _ping(client: redis.Redis, _keys: CheckKeys) -> str:
    if client.ping() is not True:
        raise Mismatch("PING did not answer PONG", "what answers at REDIS_URL is not a plain Redis: check host and port")
    return "connected; PONG (includes connecting)"


def _set_get(client: redis.Redis, keys: CheckKeys) -> str:
    value = secrets.token_hex(8)
    client.set(keys.text, value, ex=key_ttl_s)
    got = client.get(keys.text)
    if got != value:
        raise Mismatch(
            "GET returned another value than SET wrote",
            "something between us and Redis (a proxy) or another client changed the key, or Redis dropped it at once "
            "(eviction): check maxmemory-policy below and what REDIS_URL really points at",
        )
    return "value read back equal"


def _ttl(client: redis.Redis, keys: CheckKeys) -> str:
    ttl = int(client.ttl(keys.text))
    if ttl == -2:
        raise Mismatch("the key is already gone", "Redis dropped a key it was given 60 s to live: it is evicting keys "
                       "(see maxmemory-policy below) or its clock jumps")  # fmt: skip
    if not 0 < ttl <= key_ttl_s:
        raise Mismatch(f"TTL is {ttl}, expected 1..{key_ttl_s}", "the key did not keep its expiry (SET ... EX): a proxy "
                       "or module changes SET; the queue and rate limits rely on expiring keys")  # fmt: skip
    return f"{ttl} s left of {key_ttl_s}"


def _delete(client: redis.Redis, keys: CheckKeys) -> str:
    removed = int(client.delete(keys.text))
    if removed != 1 or client.exists(keys.text):
        raise Mismatch(f"DEL removed {removed} keys, expected 1", "the key written a moment ago was not there to delete: "
                       "Redis is dropping keys (see maxmemory-policy below)")  # fmt: skip
    return "key gone"


def _incr(client: redis.Redis, keys: CheckKeys) -> str:
    client.set(keys.counter, "0", ex=key_ttl_s)  # first, so the counter carries a TTL (INCR keeps it)
    # INCR itself, as the queue's Lua scripts call it (redis-py's ``incr`` sends INCRBY)
    command: Callable[..., Any] = client.execute_command  # (untyped in redis-py)
    first, second = (int(command("INCR", keys.counter)) for _ in range(2))
    if (first, second) != (1, 2):
        raise Mismatch(f"INCR counted {first}, {second}; expected 1, 2", "another client writes the same key, or a "
                       "proxy does not forward INCR as such: check what REDIS_URL points at")  # fmt: skip
    return "counted 1, 2"


def _list(client: redis.Redis, keys: CheckKeys) -> str:
    length = int(client.lpush(keys.items, "first", "second"))
    client.expire(keys.items, key_ttl_s)
    popped = client.lpop(keys.items)
    if length != 2 or popped != "second":
        raise Mismatch("LPUSH/LPOP did not give the last pushed item back", "another client writes the same key, or a "
                       "proxy reorders commands: check what REDIS_URL points at")  # fmt: skip
    return "pushed 2, popped the last"


def _lua(client: redis.Redis, keys: CheckKeys) -> str:
    # The queue and the rate limits are Lua scripts, run as redis-py runs them: EVALSHA, then EVAL on NOSCRIPT.
    script = client.register_script("redis.call('EXISTS', KEYS[1]) return 42")  # reads only: a replica runs it too
    if script(keys=[keys.items]) != 42:
        raise Mismatch("a Lua script gave a wrong answer", "what answers at REDIS_URL runs scripts differently from "
                       "Redis: check what it is (a proxy?)")  # fmt: skip
    return "script ran (EVALSHA)"


@dataclass(frozen=True)
class StepSpec:
    name: str
    command: str  # what a diagnosis names (an "unknown command" error names its own)
    run: Step
    needs: str | None = None  # a step reading what this one wrote: skipped if it failed, not failed again


STEPS: tuple[StepSpec, ...] = (
    StepSpec("ping", "PING", _ping),  # first: connecting happens here
    StepSpec("set/get", "SET/GET", _set_get),
    StepSpec("ttl", "TTL", _ttl, needs="set/get"),
    StepSpec("del", "DEL", _delete, needs="set/get"),
    StepSpec("incr", "INCR", _incr),
    StepSpec("lpush/lpop", "LPUSH/LPOP", _list),
    StepSpec("lua", "EVALSHA", _lua),
)

_WRITING_STEPS = frozenset({"set/get", "incr", "lpush/lpop"})
_UNKNOWN_COMMAND = re.compile(r"unknown command [`']([^`']+)[`']", re.IGNORECASE)


def run_step(spec: StepSpec, client: redis.Redis, keys: CheckKeys, target: RedisTarget, timeout_ms: int) -> StepResult:
    started = time.perf_counter()
    try:
        detail = spec.run(client, keys)
    except Mismatch as exc:
        return StepResult(spec.name, "FAILED", _ms(started), exc.diagnosis.problem, exc.diagnosis, answered=True)
    except (redis.RedisError, OSError) as exc:
        named = _UNKNOWN_COMMAND.search(str(exc))  # which command of the step, e.g. EXPIRE inside "lpush/lpop"
        command = named.group(1).upper() if named else spec.command
        diagnosis = diagnose(exc, target, command=command, timeout_ms=timeout_ms)
        return StepResult(spec.name, "FAILED", _ms(started), diagnosis.problem, diagnosis)
    return StepResult(spec.name, "ok", _ms(started), detail)


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000


def step_line(result: StepResult) -> str:
    latency = f"{result.ms:8.1f} ms" if result.status != "skipped" else " " * 11
    return f"  {result.name:<11} {result.status:<7} {latency}  {result.detail}".rstrip()


@dataclass(frozen=True)
class ServerFacts:
    version: str
    role: str
    maxmemory: int
    policy: str
    used_memory: str
    aof: bool
    rdb_save: str | None  # None: CONFIG GET not allowed here (managed Redis)


def server_facts(client: redis.Redis) -> ServerFacts:
    info: dict[str, Any] = client.info()
    try:
        save: str | None = str(client.config_get("save").get("save", ""))
    except redis.RedisError:  # CONFIG is disabled or renamed on managed services
        save = None
    return ServerFacts(
        version=str(info.get("redis_version", "?")),
        role=str(info.get("role", "?")),
        maxmemory=int(info.get("maxmemory", 0) or 0),
        policy=str(info.get("maxmemory_policy", "?")),
        used_memory=str(info.get("used_memory_human", "?")),
        aof=bool(int(info.get("aof_enabled", 0) or 0)),
        rdb_save=save,
    )


def describe_server(facts: ServerFacts) -> list[str]:
    """Lines about the server; a ``WARNING`` line when its eviction policy can drop queue entries."""
    limit = f"maxmemory {facts.maxmemory:,} bytes" if facts.maxmemory else "no maxmemory limit"
    lines = [f"server: Redis {facts.version}, role {facts.role}, {facts.used_memory} used, {limit}"]
    if facts.policy == "noeviction":
        lines.append("  maxmemory-policy noeviction: ok (a full Redis refuses writes instead of dropping queue entries)")
    else:
        lines.append(
            f"  WARNING maxmemory-policy is {facts.policy}: when memory fills, Redis evicts keys and queue entries go"
            " with them. Nothing is lost for good (PostgreSQL holds every message; the retry-scheduler re-enqueues what"
            " Redis dropped), but those messages go out late. Set maxmemory-policy noeviction (ElastiCache: in the"
            " parameter group) and give Redis enough memory"
        )
    if facts.aof or facts.rdb_save:
        kinds = [kind for kind, on in (("append-only file", facts.aof), (f"RDB snapshots (save {facts.rdb_save})",
                 bool(facts.rdb_save))) if on]  # fmt: skip
        lines.append(f"  persistence: {' and '.join(kinds)} (informational: a restart keeps the queue)")
    elif facts.rdb_save is None:
        lines.append("  persistence: no append-only file; RDB snapshots unknown (CONFIG GET is not allowed here)")
    else:
        lines.append("  persistence: off (informational: a restart empties the queue; PostgreSQL holds every message and"
                     " the retry-scheduler re-enqueues them)")  # fmt: skip
    if facts.role not in ("master", "?"):
        lines.append(f"  WARNING this server is a replica (role {facts.role}): writes go to the primary; point REDIS_URL at it")
    return lines


def check_redis(settings: Settings, say: Say) -> int:
    """Run every step against ``REDIS_URL`` and print the report; 0 when all passed, 1 otherwise."""
    target = RedisTarget.from_url(settings.redis_url)
    timeout_ms = max(settings.redis_timeout_ms, min_timeout_ms)
    say(f"redis: checking REDIS_URL: {target.describe()}, key prefix {settings.redis_key_prefix}")
    if not settings.enable_queues:
        say("redis: note: ENABLE_QUEUES=false, so this deployment does not use Redis; checking REDIS_URL anyway")
    if not target.db.isdigit():
        say(f"redis: FAILED: the database in REDIS_URL ({target.db!r}) is not a number: end REDIS_URL with /0 (or /N)")
        return 1
    gate = RedisGate(settings.redis_url, prefix=settings.redis_key_prefix, timeout_s=timeout_ms / 1000)
    keys = CheckKeys(gate.key("check", secrets.token_hex(6)))
    results: list[StepResult] = []
    facts: ServerFacts | None = None
    try:
        for spec in STEPS:
            done = {r.name: r for r in results}
            if any(r.diagnosis is not None and r.diagnosis.fatal for r in results):
                results.append(StepResult(spec.name, "skipped", detail="(no usable connection)"))
            elif spec.needs is not None and done[spec.needs].status != "ok":
                results.append(StepResult(spec.name, "skipped", detail=f"(needs {spec.needs})"))
            else:
                results.append(run_step(spec, gate.client, keys, target, timeout_ms))
            say(step_line(results[-1]))
        if results[0].status == "ok":
            try:
                facts = server_facts(gate.client)
            except redis.RedisError as exc:
                say(f"server: could not read INFO: {diagnose(exc, target, command='INFO', timeout_ms=timeout_ms).fix}")
    finally:
        wrote = any((r.status == "ok" or r.answered) and r.name in _WRITING_STEPS for r in results)
        tried = any(r.status != "skipped" and r.name in _WRITING_STEPS for r in results)
        say(_cleanup(gate.client, keys, wrote) if tried else "  cleanup     nothing was written")
        gate.close()
    if facts is not None:
        for line in describe_server(facts):
            say(line)
    return _summary(results, settings.redis_timeout_ms, say)


def _cleanup(client: redis.Redis, keys: CheckKeys, wrote: bool) -> str:
    """Delete the check's keys. A write step that failed with an error may still have written before it (SET, then
    an unknown INCR), so this runs whenever a write step ran; a refusal here (a replica) matters only if one got in."""
    try:
        removed = int(client.delete(*keys.all))
    except (redis.RedisError, OSError) as exc:
        if not wrote:
            return "  cleanup     nothing to delete (every write was refused)"
        return f"  cleanup     FAILED: {type(exc).__name__}; the keys {keys.base}:* expire within {key_ttl_s} s by themselves"
    return f"  cleanup     ok: the check's keys are deleted ({removed} still existed)"


def _summary(results: list[StepResult], functions_timeout_ms: int, say: Say) -> int:
    ran = [r for r in results if r.status != "skipped"]
    slow = [r for r in ran if r.status == "ok" and r.ms > functions_timeout_ms]
    for r in slow:
        say(f"  WARNING {r.name} took {r.ms:.0f} ms, over REDIS_TIMEOUT_MS={functions_timeout_ms}: the functions' calls"
            " would time out and fall back (inline sends, in-process limits). Bring Redis closer (same region/AZ), or"
            " raise REDIS_TIMEOUT_MS")  # fmt: skip
    passed = sum(1 for r in results if r.status == "ok")
    if passed == len(results):
        slowest = max(r.ms for r in results)
        say(f"redis: ok: {passed}/{len(results)} steps passed (slowest {slowest:.1f} ms;"
            f" REDIS_TIMEOUT_MS={functions_timeout_ms})")  # fmt: skip
        return 0
    say(f"redis: FAILED: {passed}/{len(results)} steps passed. What to do:")
    seen: set[str] = set()
    for r in results:
        if r.diagnosis is not None and r.diagnosis.fix not in seen:
            seen.add(r.diagnosis.fix)
            say(f"  - {r.name}: {r.diagnosis.fix}")
    return 1
