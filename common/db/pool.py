"""A bounded, thread-safe pool of pg8000 connections.

Size and wait come from ``DATABASE_URL`` (``connection_limit``, ``pool_timeout``). A connection that
the server dropped (restart, failover, idle kill) is never handed out again: on checkout the socket is
polled without a round trip (an idle PostgreSQL connection has nothing to read, so anything readable is
an EOF or the server's "terminating connection" notice), and a connection that raised a network error
while in use is discarded on return instead of going back to the idle list.
"""

from __future__ import annotations

import logging
import select
import socket
import struct
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, cast

import pg8000.native
from pg8000.converters import timestamptz_in

from common.config import DatabaseTarget

logger = logging.getLogger("koinonia.db")



class Connection(Protocol):
    """What callers use of a pg8000 native connection (``:name`` parameters, autocommit)."""

    def run(self, sql: str, stream: Any = None, types: Any = None, **params: Any) -> Any: ...

    def execute_simple(self, statement: str) -> Any: ...

    def close(self) -> None: ...

# Errors that mean the connection itself is unusable (as opposed to a failed statement).
_BROKEN_ERRORS: tuple[type[BaseException], ...] = (
    pg8000.native.InterfaceError,
    OSError,
    struct.error,
    EOFError,
)

connect_timeout_s = 5.0  # TCP connect and each socket read/write after that
_IDLE = b"I"


class DatabaseUnavailable(Exception):
    """PostgreSQL could not be reached; the message says where and what to check."""


class PoolTimeout(DatabaseUnavailable):
    """Every connection stayed busy for the whole ``pool_timeout``."""


@dataclass(frozen=True)
class PoolStats:
    max_size: int
    open: int
    in_use: int
    idle: int
    waiting: int
    replaced: int  # connections found broken and discarded since start


class Pool:
    def __init__(self, target: DatabaseTarget, *, application_name: str = "koinonia") -> None:
        self.target = target
        self._application_name = application_name
        self._idle: deque[Connection] = deque()
        self._open = 0
        self._waiting = 0
        self._replaced = 0
        self._closed = False
        self._cond = threading.Condition()

    # -- public -------------------------------------------------------------------------------

    @contextmanager
    def connection(self) -> Iterator[Connection]:
        """Borrow a connection (autocommit); it returns to the pool when the block ends."""
        conn = self._checkout()
        broken = False
        try:
            yield conn
        except BaseException as exc:
            broken = _breaks_connection(exc)
            raise
        finally:
            self._checkin(conn, broken=broken)

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """A connection inside ``BEGIN`` ... ``COMMIT`` (``ROLLBACK`` if the block raises)."""
        with self.connection() as conn:
            conn.run("BEGIN")
            try:
                yield conn
            except BaseException:
                _quiet_rollback(conn)
                raise
            conn.run("COMMIT")

    def run(self, sql: str, **params: Any) -> list[list[Any]]:
        """One statement on a borrowed connection; the rows it returned."""
        with self.connection() as conn:
            return conn.run(sql, **params) or []

    def stats(self) -> PoolStats:
        with self._cond:
            idle = len(self._idle)
            return PoolStats(
                max_size=self.target.pool_size,
                open=self._open,
                in_use=self._open - idle,
                idle=idle,
                waiting=self._waiting,
                replaced=self._replaced,
            )

    def close(self) -> None:
        with self._cond:
            self._closed = True
            idle, self._idle = list(self._idle), deque()
            self._open -= len(idle)
            self._cond.notify_all()
        for conn in idle:
            _quiet_close(conn)

    # -- internals ------------------------------------------------------------------------------

    def _checkout(self) -> Connection:
        deadline = time.monotonic() + self.target.pool_timeout_s
        with self._cond:
            while True:
                if self._closed:
                    raise DatabaseUnavailable("the connection pool is closed")
                while self._idle:
                    conn = self._idle.pop()
                    if _looks_alive(conn):
                        return conn
                    self._open -= 1
                    self._replaced += 1
                    _quiet_close(conn)
                    logger.info("discarded a dropped PostgreSQL connection; opening a new one")
                if self._open < self.target.pool_size:
                    self._open += 1
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise PoolTimeout(
                        f"all {self.target.pool_size} PostgreSQL connections stayed busy for "
                        f"{self.target.pool_timeout_s:g}s; raise connection_limit or pool_timeout in "
                        "DATABASE_URL, or look for slow queries"
                    )
                self._waiting += 1
                try:
                    self._cond.wait(remaining)
                finally:
                    self._waiting -= 1
        try:
            return self._connect()
        except BaseException:
            with self._cond:
                self._open -= 1
                self._cond.notify()
            raise

    def _checkin(self, conn: Connection, *, broken: bool) -> None:
        if not broken and getattr(conn, "_transaction_status", _IDLE) != _IDLE:
            # Leaked transaction (the caller forgot COMMIT, or raised inside one): never let the next
            # borrower inherit half a transaction or a failed one.
            broken = not _quiet_rollback(conn)
        with self._cond:
            if broken or self._closed:
                self._open -= 1
                if broken:
                    self._replaced += 1
            else:
                self._idle.append(conn)
            self._cond.notify()
        if broken or self._closed:
            _quiet_close(conn)

    def _connect(self) -> Connection:
        t = self.target
        try:
            conn = _PreparingConnection(
                statement_cache=t.statement_cache,
                user=t.user,
                password=t.password,
                database=t.database,
                unix_sock=t.unix_sock,
                sock=None if t.unix_sock else _tcp_socket(t.host or "localhost", t.port),
                timeout=connect_timeout_s * 6,
                application_name=self._application_name,
                tcp_keepalive=True,
            )
            return cast(Connection, conn)
        except pg8000.native.DatabaseError as exc:
            raise DatabaseUnavailable(
                f"PostgreSQL at {t.describe()} refused the connection ({_sqlstate(exc)}); "
                "check the user, password and database in DATABASE_URL"
            ) from exc
        except (pg8000.native.InterfaceError, OSError) as exc:
            raise DatabaseUnavailable(
                f"cannot reach PostgreSQL at {t.describe()}; is it running? "
                "(start it, or unset DATABASE_URL to let `koinonia dev` run an embedded one)"
            ) from exc


def _tcp_socket(host: str, port: int) -> socket.socket:
    """A TCP socket with Nagle off: pg8000 writes a large statement in several pieces, and Nagle with
    delayed ACKs stalls the last one ~40 ms (measured: a 1,000-recipient send 143 ms -> 57 ms)."""
    sock = socket.create_connection((host, port), timeout=connect_timeout_s)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    sock.settimeout(connect_timeout_s * 6)
    return sock


def _breaks_connection(exc: BaseException) -> bool:
    """Network failures, and server errors of class 08 (connection) or 57P (shutdown, terminated)."""
    if isinstance(exc, _BROKEN_ERRORS):
        return True
    if isinstance(exc, pg8000.native.DatabaseError):
        code = str(exc.args[0].get("C", "")) if exc.args and isinstance(exc.args[0], dict) else ""
        return code.startswith(("08", "57P"))
    return False


class _PreparingConnection(pg8000.native.Connection):  # type: ignore[misc]  # pg8000 ships no types
    """pg8000's connection, with each parameterised statement prepared once and then only bound and executed.

    pg8000 runs a statement with parameters as three round trips (parse, describe, bind/execute) after turning
    its ``:name`` parameters into ``$n`` in Python, character by character, every time; the consumer's claim and
    outcome statements are long and run thousands of times a minute. Prepared once per connection, each later
    run is one round trip and no parsing. The cache is per connection (statements live in the server session),
    bounded (least recently used out), and ``statement_cache=0`` in ``DATABASE_URL`` turns it off (RDS Proxy
    pins a client's session while it holds prepared statements: turn it off if the proxy's multiplexing
    matters more than the round trips). A statement whose plan a migration invalidated is dropped from the
    cache when PostgreSQL says so and prepared again at once; inside a transaction (which that error aborted) the
    call fails and the caller's retry prepares it again.
    """

    def __init__(self, *args: Any, statement_cache: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._statement_cache = statement_cache
        self._prepared: OrderedDict[str, Any] = OrderedDict()
        self.register_in_adapter(_TIMESTAMPTZ_OID, _timestamptz_in)

    def run(self, sql: str, stream: Any = None, types: Any = None, **params: Any) -> Any:
        if not params or stream is not None or types is not None or not self._statement_cache:
            return super().run(sql, stream=stream, types=types, **params)
        statement = self._prepared.get(sql)
        if statement is None:
            statement = self.prepare(sql)
            self._prepared[sql] = statement
            if len(self._prepared) > self._statement_cache:
                _, oldest = self._prepared.popitem(last=False)
                oldest.close()
        else:
            self._prepared.move_to_end(sql)
        try:
            return statement.run(**params)
        except pg8000.native.DatabaseError as exc:
            if _sqlstate_code(exc) not in _STALE_PLAN:
                raise
            self._prepared.pop(sql, None)
            if getattr(self, "_transaction_status", _IDLE) != _IDLE:
                raise  # inside a transaction, which this error aborted: the caller's retry prepares it again
            statement = self.prepare(sql)  # outside one: prepared again at once, as pg8000 alone would have
            self._prepared[sql] = statement
            return statement.run(**params)


_TIMESTAMPTZ_OID = 1184


def _timestamptz_in(text: str) -> datetime | str:
    """A ``timestamptz`` from PostgreSQL's text form: ``datetime.fromisoformat`` (C, ~0.2 us) where pg8000 uses
    ``strptime`` (~10 us). A page of 50 messages decodes ~150 of them, and the load test found it at 17% of the
    send function's time. Anything ``fromisoformat`` refuses (``infinity``, years past 9999, BC) goes to
    pg8000's own converter, so the values are the ones pg8000 would give."""
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return cast("datetime | str", timestamptz_in(text))


_STALE_PLAN = {"0A000", "26000"}  # cached plan must not change result type; prepared statement does not exist


def _sqlstate_code(exc: BaseException) -> str | None:
    detail = exc.args[0] if exc.args else None
    return str(detail.get("C")) if isinstance(detail, dict) and detail.get("C") else None


def _looks_alive(conn: Connection) -> bool:
    sock: socket.socket | None = getattr(conn, "_usock", None)
    if sock is None:
        return False
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return False
    return not readable


def _quiet_rollback(conn: Connection) -> bool:
    try:
        conn.run("ROLLBACK")
        return True
    except Exception:  # the connection is going away; the caller sees its original error
        return False


def _quiet_close(conn: Connection) -> None:
    try:
        conn.close()
    except Exception:  # closing a dead socket can raise; there is nothing left to release
        logger.debug("error while closing a dropped connection", exc_info=True)


def _sqlstate(exc: BaseException) -> str:
    detail = exc.args[0] if exc.args else {}
    if isinstance(detail, dict):
        return f"{detail.get('C', '?')}: {detail.get('M', '')}"
    return type(exc).__name__
