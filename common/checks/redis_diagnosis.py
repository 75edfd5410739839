"""From a Redis client error to what an operator should change: the table behind ``koinonia check redis``.

redis-py reports a dozen different situations through a few exception classes (a wrong password is a
``ConnectionError``; a missing database is a bare ``ResponseError``), and the raw messages name neither
the setting at fault nor the fix. ``diagnose`` turns one error into a ``Diagnosis``: a short name for the
step line, the fix as a sentence, and whether the connection itself is unusable (``fatal``: the
remaining steps would only fail the same way, so they are skipped).

Order matters: ``AuthenticationError``, ``BusyLoadingError`` and ``MaxClientsReachedError`` are
subclasses of ``ConnectionError``, and a refusal from the server must not be read as a network problem.
"""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass

from redis import exceptions as rx

from common.checks.redis_target import RedisTarget


@dataclass(frozen=True)
class Diagnosis:
    problem: str  # a few words for the step line: "connection refused"
    fix: str  # what to do, as a sentence
    fatal: bool = False  # the connection is unusable: later steps are skipped


def diagnose(exc: BaseException, target: RedisTarget, *, command: str, timeout_ms: int) -> Diagnosis:
    """What ``exc``, raised while running ``command`` against ``target``, means and how to fix it."""
    text = target.scrub(str(exc))
    lower = text.lower()
    chain = _causes(exc)
    where = target.where
    if isinstance(exc, rx.AuthenticationError) or lower.startswith(("noauth", "wrongpass")):
        return _auth(lower, target)
    if isinstance(exc, rx.BusyLoadingError):
        return Diagnosis(
            "Redis is loading its data", "Redis is still loading its dataset after a restart; wait a moment and run the "
            "check again", fatal=True,
        )  # fmt: skip
    if isinstance(exc, rx.MaxClientsReachedError):
        return Diagnosis(
            "too many clients", f"Redis at {where} refuses new connections (maxclients reached): raise maxclients, or find "
            "what holds so many connections (CLIENT LIST)", fatal=True,
        )  # fmt: skip
    if isinstance(exc, rx.NoPermissionError) or lower.startswith("noperm"):
        who = f"user {target.username}" if target.username else "the default user"
        return Diagnosis(
            f"{command} not permitted (NOPERM)", f"the Redis ACL does not let {who} run {command} or touch these keys: "
            "grant it every command and key Koinonia uses (e.g. ACL SETUSER <user> +@all ~*), or use a user that has them",
        )  # fmt: skip
    if isinstance(exc, rx.ReadOnlyError) or lower.startswith("readonly"):
        return Diagnosis(
            "READONLY: this is a replica", f"{where} is a read-only replica, which refuses writes: point REDIS_URL at the "
            "primary (ElastiCache: the primary endpoint, not the reader endpoint or a node's own address)",
        )  # fmt: skip
    if isinstance(exc, rx.OutOfMemoryError) or lower.startswith("oom"):
        return Diagnosis(
            "OOM: maxmemory reached", "Redis is full (used memory is over maxmemory) and refuses writes, so nothing can be "
            "queued (sends fall back inline): give Redis more memory (raise maxmemory or use a larger node), and keep "
            "maxmemory-policy noeviction, which a queue needs",
        )  # fmt: skip
    if "misconf" in lower:
        return Diagnosis(
            "MISCONF: Redis cannot save", "Redis failed to write its snapshot to disk and now refuses writes: fix its disk "
            "(space, permissions of its dir), or set stop-writes-on-bgsave-error no if persistence is not wanted",
        )  # fmt: skip
    if "unknown command" in lower:
        return Diagnosis(
            f"{command} unknown to the server", f"the server does not know {command}: it is disabled or renamed "
            "(rename-command in redis.conf, or a managed service such as ElastiCache that blocks some commands). "
            f"Koinonia needs {command}: enable it, or use a Redis that allows it",
        )  # fmt: skip
    if "db index" in lower or "select is not allowed" in lower:
        return Diagnosis(
            f"database {target.db} does not exist", f"this server has no database {target.db} (it has fewer `databases`; "
            "a cluster-mode or ElastiCache serverless Redis has only 0): use /0 at the end of REDIS_URL, or raise "
            "`databases` on the server", fatal=True,
        )  # fmt: skip
    if isinstance(exc, (rx.MovedError, rx.AskError)) or lower.startswith(("moved", "ask ")):
        return Diagnosis(
            "cluster mode (MOVED)", f"{where} is a node of a Redis Cluster, and Koinonia talks to one Redis: use a Redis "
            "with cluster mode disabled (ElastiCache: a replication group, primary endpoint)", fatal=True,
        )  # fmt: skip
    if isinstance(exc, rx.TimeoutError) or any(isinstance(c, socket.timeout) for c in chain):
        return _timeout(lower, chain, target, timeout_ms)
    if isinstance(exc, rx.InvalidResponse):
        tls = " or a TLS-only server reached with redis:// (use rediss://)" if not target.tls else ""
        return Diagnosis(
            "not a Redis answer", f"what answers at {where} does not speak the Redis protocol: a wrong port (another service "
            f"there?){tls}; fix host and port in REDIS_URL", fatal=True,
        )  # fmt: skip
    if isinstance(exc, (rx.ConnectionError, OSError)):
        return _connection(lower, chain, target)
    return Diagnosis(f"unexpected error: {type(exc).__name__}: {text}", f"Redis answered {command} with an error nobody "
                     "expected; check the server's log", fatal=not isinstance(exc, rx.ResponseError))  # fmt: skip


def _auth(lower: str, target: RedisTarget) -> Diagnosis:
    if "without any password configured" in lower or "no password is set" in lower:
        return Diagnosis(
            "password given, none needed", "REDIS_URL carries a password but this server has none: take it out of "
            "REDIS_URL, or set requirepass on the server", fatal=True,
        )  # fmt: skip
    if not target.has_password:
        return Diagnosis(
            "NOAUTH: a password is required", "Redis requires a password and REDIS_URL has none: put it in REDIS_URL as "
            "redis://:PASSWORD@host:port/db (an ACL user: redis://USER:PASSWORD@...; ElastiCache: the AUTH token, "
            "with rediss://), URL-encoding any special characters", fatal=True,
        )  # fmt: skip
    return Diagnosis(
        "WRONGPASS: the password is refused", "Redis refused the user/password in REDIS_URL: copy the right one (the "
        "server's requirepass, the ACL user's password, or the ElastiCache AUTH token) into REDIS_URL, URL-encoding "
        "any special characters", fatal=True,
    )  # fmt: skip


def _timeout(lower: str, chain: list[BaseException], target: RedisTarget, timeout_ms: int) -> Diagnosis:
    if target.tls and ("handshake" in lower or any("handshake" in str(c).lower() for c in chain)):
        return Diagnosis(
            "no TLS handshake", f"{target.where} did not complete a TLS handshake: if this Redis does not use TLS "
            "(no in-transit encryption), write redis:// instead of rediss:// in REDIS_URL; if it does, the port is filtered "
            "or slow (security group, VPC routing; REDIS_TIMEOUT_MS for a slow link)", fatal=True,
        )  # fmt: skip
    tls = "; or, with rediss://, the server may not speak TLS (then use redis://)" if target.tls else ""
    return Diagnosis(
        f"timeout ({timeout_ms} ms)", f"no answer from {target.where} within {timeout_ms} ms: the network path is closed "
        "or slow (a security group or firewall not allowing the port from here, another VPC or subnet without a route, "
        f"a NACL), or the server is overloaded{tls}. If the link is known to be slow, raise REDIS_TIMEOUT_MS", fatal=True,
    )  # fmt: skip


def _connection(lower: str, chain: list[BaseException], target: RedisTarget) -> Diagnosis:
    where = target.where
    if any(isinstance(c, ConnectionRefusedError) for c in chain) or "connection refused" in lower or "error 111" in lower:
        return Diagnosis(
            "connection refused", f"nothing listens at {where}: is redis-server running there? Start it (`make dev` "
            "starts one locally), or fix host and port in REDIS_URL", fatal=True,
        )  # fmt: skip
    if any(isinstance(c, socket.gaierror) for c in chain) or any(
        phrase in lower for phrase in ("name or service not known", "name resolution", "nodename nor servname", "getaddrinfo")
    ):
        return Diagnosis(
            "DNS: host not found", f"the host {target.host} in REDIS_URL does not resolve: check its spelling; a private "
            "endpoint (ElastiCache) resolves only from inside its VPC", fatal=True,
        )  # fmt: skip
    if any(isinstance(c, FileNotFoundError) for c in chain) and target.socket_path:
        return Diagnosis(
            "no socket file", f"there is no Redis socket at {target.socket_path}: start Redis with that unixsocket, or fix "
            "the path in REDIS_URL", fatal=True,
        )  # fmt: skip
    if any(isinstance(c, ssl.SSLError) for c in chain) or "[ssl" in lower or "certificate" in lower:
        if "certificate" in lower or any(isinstance(c, ssl.SSLCertVerificationError) for c in chain):
            return Diagnosis(
                "TLS certificate not trusted", f"the TLS certificate of {where} is not trusted here: use the endpoint name "
                "the certificate was issued for, or add ?ssl_ca_certs=/path/ca.pem to REDIS_URL", fatal=True,
            )  # fmt: skip
        return Diagnosis(
            "TLS mismatch", f"the TLS handshake with {where} failed: this Redis does not seem to use TLS; write redis:// "
            "instead of rediss:// in REDIS_URL", fatal=True,
        )  # fmt: skip
    if not target.tls and any(
        phrase in lower for phrase in ("closed by server", "connection reset", "error while reading", "broken pipe")
    ):
        return Diagnosis(
            "connection closed by the server", f"{where} closed the connection at once: if this Redis requires TLS "
            "(in-transit encryption, as ElastiCache can), write rediss:// instead of redis:// in REDIS_URL", fatal=True,
        )  # fmt: skip
    return Diagnosis(
        "cannot connect", f"could not connect to {where}: check host and port in REDIS_URL, that Redis runs, and that "
        "the network lets this machine reach it", fatal=True,
    )  # fmt: skip


def _causes(exc: BaseException) -> list[BaseException]:
    """``exc`` and what it was raised from (redis-py wraps the socket error)."""
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen and len(seen) < 10:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen
