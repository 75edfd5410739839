"""The PostgreSQL pool: bounded, waits, never hands out a dead connection."""

from __future__ import annotations

import threading

import pg8000.native
import pytest

from common.config import parse_database_url
from common.db.pool import DatabaseUnavailable, Pool, PoolTimeout
from infra.embedded import PostgresProcess


def _sized(url: str, **query: object) -> Pool:
    extra = "&".join(f"{k}={v}" for k, v in query.items())
    return Pool(parse_database_url(url + ("&" if "?" in url else "?") + extra))


def test_pool_size_and_wait_come_from_the_url(database_url):
    pool = _sized(database_url, connection_limit=2, pool_timeout=0.2)
    try:
        with pool.connection(), pool.connection():
            assert pool.stats().in_use == 2
            with pytest.raises(PoolTimeout, match="raise connection_limit"), pool.connection():
                pass
        assert pool.stats().idle == 2
    finally:
        pool.close()


def test_a_waiter_gets_the_connection_someone_returns(database_url):
    pool = _sized(database_url, connection_limit=1, pool_timeout=30)
    got: list[int] = []
    holding = threading.Event()
    release = threading.Event()

    def holder() -> None:
        with pool.connection():
            holding.set()
            release.wait()

    def waiter() -> None:
        got.append(pool.run("SELECT 7")[0][0])

    try:
        t1 = threading.Thread(target=holder)
        t1.start()
        holding.wait()
        t2 = threading.Thread(target=waiter)
        t2.start()
        while pool.stats().waiting == 0:  # the waiter is blocked on the pool's condition
            t2.join(0.01)
        release.set()
        t1.join()
        t2.join()
        assert got == [7]
        assert pool.stats().open == 1
    finally:
        pool.close()


def test_an_unfinished_transaction_never_reaches_the_next_borrower(pool):
    with pool.connection() as conn:
        conn.run("BEGIN")
        conn.run("CREATE TABLE leaked (id int)")
    with pool.connection() as conn:
        assert conn.run("SELECT count(*) FROM pg_tables WHERE tablename = 'leaked'")[0][0] == 0
        assert conn.run("SELECT now() = statement_timestamp()")[0][0] is True  # not inside a transaction


def test_transaction_commits_or_rolls_back(pool):
    pool.run("CREATE TABLE t (id int)")
    with pool.transaction() as conn:
        conn.run("INSERT INTO t VALUES (1)")
    with pytest.raises(ZeroDivisionError), pool.transaction() as conn:
        conn.run("INSERT INTO t VALUES (2)")
        raise ZeroDivisionError
    assert pool.run("SELECT id FROM t") == [[1]]


def test_a_backend_killed_while_borrowed_is_replaced(pool):
    with pytest.raises((pg8000.native.DatabaseError, pg8000.native.InterfaceError, OSError)), pool.connection() as conn:
        pid = conn.run("SELECT pg_backend_pid()")[0][0]
        pool.run("SELECT pg_terminate_backend(:pid)", pid=pid)  # another pooled connection does it
        conn.run("SELECT 1")
    assert pool.stats().replaced >= 1
    assert pool.run("SELECT 1") == [[1]]


@pytest.mark.smoke
def test_connections_broken_by_a_server_restart_are_replaced_not_reused(service_dir):
    server = PostgresProcess(service_dir / "pg").start()
    pool = _sized(server.url, connection_limit=3, pool_timeout=5)
    try:
        with pool.connection() as a, pool.connection() as b:
            old_pids = {a.run("SELECT pg_backend_pid()")[0][0], b.run("SELECT pg_backend_pid()")[0][0]}
        assert pool.stats().idle == 2
        server.restart()
        # Every idle connection is dead now; none may be handed out.
        with pool.connection() as a, pool.connection() as b:
            new_pids = {a.run("SELECT pg_backend_pid()")[0][0], b.run("SELECT pg_backend_pid()")[0][0]}
        assert not (old_pids & new_pids)
        assert pool.stats().replaced == 2
    finally:
        pool.close()
        server.stop()


def test_unreachable_database_says_what_to_do(tmp_path):
    pool = Pool(parse_database_url(f"postgresql://postgres@/x?host={tmp_path}"))
    with pytest.raises(DatabaseUnavailable, match="is it running"):
        pool.run("SELECT 1")
    assert pool.stats().open == 0


def _prepared(conn) -> int:
    return int(conn.run("SELECT count(*) FROM pg_prepared_statements")[0][0])


def test_a_statement_with_parameters_is_prepared_once_per_connection(database_url):
    pool = _sized(database_url, connection_limit=1)
    try:
        with pool.connection() as conn:
            before = _prepared(conn)
            for i in range(5):
                assert conn.run("SELECT CAST(:x AS int) + 1", x=i) == [[i + 1]]
            assert _prepared(conn) == before + 1
            assert conn.run("SELECT CAST(:x AS text) || 'b'", x="a") == [["ab"]]
            assert _prepared(conn) == before + 2
    finally:
        pool.close()


def test_the_statement_cache_is_bounded_and_can_be_turned_off(database_url):
    pool = _sized(database_url, connection_limit=1, statement_cache=2)
    off = _sized(database_url, connection_limit=1, statement_cache=0)
    try:
        with pool.connection() as conn:
            for i in range(5):
                conn.run(f"SELECT CAST(:x AS int) + {i}", x=1)
            assert _prepared(conn) == 2, "the least recently used statements are closed"
        with off.connection() as conn:
            conn.run("SELECT CAST(:x AS int)", x=1)
            assert _prepared(conn) == 0
    finally:
        pool.close()
        off.close()


def test_a_plan_a_migration_invalidated_is_prepared_again(database_url):
    pool = _sized(database_url, connection_limit=1)
    try:
        with pool.connection() as conn:
            conn.run("CREATE TABLE cache_probe (id int)")
            conn.run("INSERT INTO cache_probe VALUES (1)")
            sql = "SELECT * FROM cache_probe WHERE id = CAST(:id AS int)"
            assert conn.run(sql, id=1) == [[1]]
            conn.run("ALTER TABLE cache_probe ADD COLUMN note text")
            assert conn.run(sql, id=1) == [[1, None]], "outside a transaction: prepared again at once"
            conn.run("ALTER TABLE cache_probe ADD COLUMN more text")
            conn.run("BEGIN")
            with pytest.raises(pg8000.native.DatabaseError, match="0A000"):
                conn.run(sql, id=1)  # inside one, which the error aborts
            conn.run("ROLLBACK")
            assert conn.run(sql, id=1) == [[1, None, None]], "the retry prepares it again"
    finally:
        pool.close()


@pytest.mark.parametrize("literal", [
    "2026-12-04 19:00:00.123456+00", "2026-12-04 19:00:00+00", "2026-06-01 12:30:00.5+05:30", "0999-01-01 00:00:00+00",
    "infinity", "-infinity", "10000-01-01 00:00:00+00", "2000-01-01 00:00:00 BC",
])  # fmt: skip
def test_timestamps_read_back_as_pg8000_reads_them(pool, literal):
    from pg8000.converters import timestamptz_in

    with pool.connection() as conn:
        text = conn.run("SELECT CAST(CAST(:t AS timestamptz) AS text)", t=literal)[0][0]
        value = conn.run("SELECT CAST(:t AS timestamptz)", t=literal)[0][0]
    assert value == timestamptz_in(text)
    assert type(value) is type(timestamptz_in(text))
