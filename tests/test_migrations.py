from __future__ import annotations

import json
import shutil
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


# -- 0008: plaintext numbers, names and bodies become sealed values (with the configured keys) -----------------------

CHURCH = "0190f5a4-0000-7000-8000-0000000000c1"
PHONE, EMAIL, FIRST, LAST = "+16302000007", "jane.doe@example.org", "Jane", "Doe"
BODY, SUBJECT, HTML, INBOUND = "Potluck Sunday after service", "This week", "<p>This week at church</p>", "Pray for my mom"
INVALID_ANSWER = {"broadcast_id": "b1", "invalid": [{"value": "630 200 0007 9", "reason": "not a number"}]}


def _insert_old_shape(pool: Pool) -> dict[str, str]:
    """Rows as the application wrote them up to 0007: numbers, names and bodies in plaintext columns."""
    ids = {name: str(uuid.uuid4()) for name in (
        "contact", "broadcast", "plain_broadcast", "silent_broadcast", "message", "mail", "erased", "conversation", "text",
    )}  # fmt: skip
    pool.run("INSERT INTO churches (id, name) VALUES (CAST(:id AS uuid), 'First Church')", id=CHURCH)
    pool.run(
        "INSERT INTO contacts (id, church_id, phone, email, first_name, last_name)"
        " VALUES (CAST(:id AS uuid), CAST(:c AS uuid), :p, :e, :f, :l)",
        id=ids["contact"], c=CHURCH, p=PHONE, e=EMAIL, f=FIRST, l=LAST,
    )  # fmt: skip
    pool.run("INSERT INTO opt_outs (church_id, address, source) VALUES (CAST(:c AS uuid), :a, 'keyword')", c=CHURCH, a=PHONE)
    pool.run(
        "INSERT INTO opt_out_events (church_id, address, action, source, keyword)"
        " VALUES (CAST(:c AS uuid), :a, 'opt_out', 'keyword', 'STOP')", c=CHURCH, a=PHONE,
    )  # fmt: skip
    for name, answer in (("broadcast", INVALID_ANSWER), ("plain_broadcast", {"broadcast_id": "b2"}), ("silent_broadcast", None)):
        pool.run(
            "INSERT INTO broadcasts (id, church_id, channel, lane, response)"
            " VALUES (CAST(:id AS uuid), CAST(:c AS uuid), 'sms', 'bulk', CAST(:r AS jsonb))",
            id=ids[name], c=CHURCH, r=None if answer is None else json.dumps(answer),
        )  # fmt: skip
    for name, to, body, subject, html, channel in (
        ("message", PHONE, BODY, None, None, "sms"),
        ("mail", EMAIL, BODY, SUBJECT, HTML, "mail"),
        ("erased", "erased", "", None, None, "sms"),  # what a person's erasure left before 0008
    ):
        pool.run(
            "INSERT INTO messages (id, church_id, broadcast_id, channel, lane, to_address, from_address, body, subject,"
            " html_body, status, deadline_at) VALUES (CAST(:id AS uuid), CAST(:c AS uuid), CAST(:b AS uuid), :ch, 'bulk',"
            " :t, '+13125550100', :body, :s, :h, 'delivered', now() + interval '1 day')",
            id=ids[name], c=CHURCH, b=ids["broadcast"], ch=channel, t=to, body=body, s=subject, h=html,
        )  # fmt: skip
    pool.run(
        "INSERT INTO conversations (id, church_id, church_number, contact_address, contact_id)"
        " VALUES (CAST(:id AS uuid), CAST(:c AS uuid), '+13125550100', :a, CAST(:contact AS uuid))",
        id=ids["conversation"], c=CHURCH, a=PHONE, contact=ids["contact"],
    )  # fmt: skip
    pool.run(
        "INSERT INTO conversation_messages (id, conversation_id, direction, body)"
        " VALUES (CAST(:id AS uuid), CAST(:c AS uuid), 'inbound', :b)", id=ids["text"], c=ids["conversation"], b=INBOUND,
    )  # fmt: skip
    return ids


def _columns(pool: Pool, table: str) -> set[str]:
    return {r[0] for r in pool.run(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema() AND table_name = :t",
        t=table)}  # fmt: skip


def test_0008_seals_existing_plaintext_and_drops_it(env, empty_pool, tmp_path):
    from common.db.migrate import MIGRATIONS_DIR
    from common.privacy import crypto

    for path in MIGRATIONS_DIR.iterdir():
        if path.name[:4].isdigit() and int(path.name[:4]) <= 7:
            shutil.copy(path, tmp_path / path.name)
    assert migrate(empty_pool, tmp_path, progress=lambda _: None) == [1, 2, 3, 4, 5, 6, 7]
    ids = _insert_old_shape(empty_pool)
    lines: list[str] = []
    assert migrate(empty_pool, progress=lines.append)[0] == 8
    assert "  sealing 1 contacts rows" in lines

    h = crypto.lookup_hash(CHURCH, PHONE)
    [[phone_enc, phone_hash, email_enc, email_hash, first, last]] = empty_pool.run(
        "SELECT phone_enc, phone_hash, email_enc, email_hash, first_name_enc, last_name_enc FROM contacts")
    assert crypto.unseal(phone_enc, "address") == PHONE and bytes(phone_hash) == h
    assert crypto.unseal(email_enc, "address") == EMAIL and bytes(email_hash) == crypto.lookup_hash(CHURCH, EMAIL)
    assert (crypto.unseal(first, "name"), crypto.unseal(last, "name")) == (FIRST, LAST)
    for table in ("opt_outs", "opt_out_events"):
        [[enc, hashed]] = empty_pool.run(f"SELECT address_enc, address_hash FROM {table}")
        assert crypto.unseal(enc, "address") == PHONE and bytes(hashed) == h
    messages = {r[0]: r[1:] for r in empty_pool.run(
        "SELECT id::text, to_enc, to_hash, body_enc, subject_enc, html_body_enc FROM messages")}  # fmt: skip
    to_enc, to_hash, body, subject, html = messages[ids["message"]]
    assert crypto.unseal(to_enc, "address") == PHONE and bytes(to_hash) == h
    assert crypto.unseal(body, "text") == BODY and subject is None and html is None
    to_enc, to_hash, body, subject, html = messages[ids["mail"]]
    assert crypto.unseal(to_enc, "address") == EMAIL and bytes(to_hash) == crypto.lookup_hash(CHURCH, EMAIL)
    assert [crypto.unseal(v, "text") for v in (body, subject, html)] == [BODY, SUBJECT, HTML]
    assert messages[ids["erased"]] == [None] * 5  # NULL is what "erased" means now
    broadcasts = {r[0]: r[1:] for r in empty_pool.run("SELECT id::text, response_enc, response_has_invalid FROM broadcasts")}
    response, has_invalid = broadcasts[ids["broadcast"]]
    assert json.loads(crypto.unseal(response, "answer")) == INVALID_ANSWER and has_invalid is True
    response, has_invalid = broadcasts[ids["plain_broadcast"]]
    assert json.loads(crypto.unseal(response, "answer")) == {"broadcast_id": "b2"} and has_invalid is False
    assert broadcasts[ids["silent_broadcast"]] == [None, False]
    [[contact_enc, contact_hash]] = empty_pool.run("SELECT contact_enc, contact_hash FROM conversations")
    assert crypto.unseal(contact_enc, "address") == PHONE and bytes(contact_hash) == h
    [[text]] = empty_pool.run("SELECT body_enc FROM conversation_messages")
    assert crypto.unseal(text, "text") == INBOUND

    # The plaintext columns are gone, and nothing in the database reads as any of it.
    gone = {"contacts": {"phone", "email", "first_name", "last_name"}, "opt_outs": {"address"},
            "opt_out_events": {"address"}, "messages": {"to_address", "body", "subject", "html_body"},
            "broadcasts": {"response"}, "conversations": {"contact_address"}, "conversation_messages": {"body"}}  # fmt: skip
    for table, columns in gone.items():
        assert not columns & _columns(empty_pool, table), table
    tables = [r[0] for r in empty_pool.run(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'")]
    dump = "\n".join(r[0] for t in tables for r in empty_pool.run(f'SELECT row_to_json(t)::text FROM "{t}" t'))
    for secret in (PHONE, PHONE[2:], EMAIL, FIRST, LAST, BODY, SUBJECT, HTML, INBOUND, "630 200 0007 9"):
        assert secret not in dump, secret
    # The schema is the one a fresh install gets.
    assert migrate(empty_pool, progress=lambda _: None) == []
    assert "key_rotations" in _tables(empty_pool)


def test_0008_on_an_empty_database_needs_no_key(empty_pool, monkeypatch):
    """A new install (and the test template) migrates without ENCRYPTION_KEY or LOOKUP_KEY."""
    for name in ("ENCRYPTION_KEY", "LOOKUP_KEY", "ENCRYPTION_KEYS_OLD"):
        monkeypatch.delenv(name, raising=False)
    assert 8 in migrate(empty_pool, progress=lambda _: None)
