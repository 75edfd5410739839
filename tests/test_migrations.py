from __future__ import annotations

import threading
import uuid

import pytest

from common.config import parse_database_url
from common.db.migrate import MigrationError, discover, migrate
from common.db.pool import Pool
from tests.helpers import with_database


@pytest.fixture
def empty_pool(pg_server_url):
    name = f"kt_empty_{uuid.uuid4().hex[:12]}"
    admin = Pool(parse_database_url(pg_server_url))
    admin.run(f'CREATE DATABASE "{name}"')
    url = with_database(pg_server_url, name)
    pool = Pool(parse_database_url(url + ("&" if "?" in url else "?") + "connection_limit=4"))
    yield pool
    pool.close()
    admin.run(f'DROP DATABASE "{name}" WITH (FORCE)')
    admin.close()


def _tables(pool: Pool) -> set[str]:
    return {r[0] for r in pool.run("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}


@pytest.mark.smoke
def test_migrate_creates_the_whole_schema_and_is_safe_to_run_twice(empty_pool):
    applied = migrate(empty_pool, progress=lambda _: None)
    assert applied == [m.version for m in discover()]
    assert {
        "churches", "api_keys", "subscriptions", "contacts", "groups", "group_members", "opt_outs",
        "messages", "broadcasts", "conversations", "conversation_messages", "dead_letters",
        "schema_migrations",
    } <= _tables(empty_pool)
    assert migrate(empty_pool, progress=lambda _: None) == []
    assert empty_pool.run("SELECT count(*) FROM schema_migrations")[0][0] == len(discover())


def test_two_migrators_at_once_apply_each_file_once(empty_pool):
    results: list[list[int]] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(3)

    def run() -> None:
        barrier.wait()
        try:
            results.append(migrate(empty_pool, progress=lambda _: None))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(len(r) for r in results) == [0, 0, len(discover())]


def test_an_edited_migration_is_refused(empty_pool, tmp_path):
    (tmp_path / "0001_first.sql").write_text("CREATE TABLE t1 (id int);")
    migrate(empty_pool, tmp_path, progress=lambda _: None)
    (tmp_path / "0001_first.sql").write_text("CREATE TABLE t1 (id bigint);")
    with pytest.raises(MigrationError, match="changed after it was applied"):
        migrate(empty_pool, tmp_path, progress=lambda _: None)


def test_a_failing_migration_leaves_nothing_half_done(empty_pool, tmp_path):
    (tmp_path / "0001_ok.sql").write_text("CREATE TABLE ok1 (id int);")
    (tmp_path / "0002_bad.sql").write_text("CREATE TABLE half (id int); SELECT no_such_function();")
    with pytest.raises(MigrationError, match="0002_bad failed"):
        migrate(empty_pool, tmp_path, progress=lambda _: None)
    assert "ok1" in _tables(empty_pool)
    assert "half" not in _tables(empty_pool)
    assert [r[0] for r in empty_pool.run("SELECT version FROM schema_migrations")] == [1]
