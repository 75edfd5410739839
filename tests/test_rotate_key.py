"""``koinonia rotate-key`` (common/privacy/rotation.py) against real PostgreSQL.

A database is filled under key A (every sealed table), then the operator's step is played: ENCRYPTION_KEY
becomes B and A moves to ENCRYPTION_KEYS_OLD. The rotation must leave every value under B, opening to the
same plaintext, with every lookup hash untouched; survive a real SIGKILL and continue without re-sealing
what was done; never bring back a value erased or changed while it ran; and ``--check`` must count what
is left.
"""

from __future__ import annotations

import base64
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from typing import Any

import pytest

from common import constants
from common.cli import main as cli_main
from common.ids import uuid7
from common.privacy import crypto, rotation
from common.privacy.crypto import Keyring, key_id
from common.privacy.rotation import SEALED_TABLES, RotationBusy, RotationError, key_counts, rotate
from tests.factories import Tenant, make_church, numbers
from tests.helpers import ROOT, set_env, wait_for

MEMBERS = numbers(7, area="630")
SENDER = "+13125550100"


# -- the data ------------------------------------------------------------------------------------------------------


def fill(pool, tenant: Tenant) -> None:
    """Rows in every sealed table and column, sealed with the configured key (as the application writes them)."""
    seal, church = crypto.seal, tenant.church_id
    contacts = [r[0] for r in pool.run("SELECT id::text FROM contacts ORDER BY id")]
    for i, contact in enumerate(contacts[:4]):
        pool.run(
            "UPDATE contacts SET first_name_enc = :f, last_name_enc = :l, email_enc = :e, email_hash = :h"
            " WHERE id = CAST(:id AS uuid)",
            f=seal(f"First{i}", "name"), l=seal(f"Last{i}", "name"), e=seal(f"member{i}@example.org", "address"),
            h=crypto.lookup_hash(church, f"member{i}@example.org"), id=contact,
        )  # fmt: skip
    pool.run(
        "INSERT INTO contacts (id, church_id, email_enc, email_hash) VALUES (CAST(:id AS uuid), CAST(:c AS uuid), :e, :h)",
        id=str(uuid7()), c=church, e=seal("only.email@example.org", "address"),
        h=crypto.lookup_hash(church, "only.email@example.org"),
    )  # fmt: skip
    for phone in MEMBERS[:3]:
        for channel in ("sms",):
            pool.run(
                "INSERT INTO opt_outs (church_id, channel, address_enc, address_hash, source)"
                " VALUES (CAST(:c AS uuid), :ch, :a, :h, 'keyword')",
                c=church, ch=channel, a=seal(phone, "address"), h=crypto.lookup_hash(church, phone),
            )  # fmt: skip
        pool.run(
            "INSERT INTO opt_out_events (church_id, channel, address_enc, address_hash, action, source, keyword)"
            " VALUES (CAST(:c AS uuid), 'sms', :a, :h, 'opt_out', 'keyword', 'STOP')",
            c=church, a=seal(phone, "address"), h=crypto.lookup_hash(church, phone),
        )  # fmt: skip
    broadcast = str(uuid7())
    pool.run(
        "INSERT INTO broadcasts (id, church_id, channel, lane, response_enc, response_has_invalid)"
        " VALUES (CAST(:id AS uuid), CAST(:c AS uuid), 'sms', 'bulk', :r, true)",
        id=broadcast, c=church, r=seal('{"invalid": [{"value": "630 200 0000 9"}]}', "answer"),
    )  # fmt: skip
    body = seal("Potluck Sunday after the service", "text")  # one seal, stored in each message of the broadcast
    for phone in MEMBERS:
        _message(pool, church, phone, body, broadcast=broadcast)
    _message(pool, church, "member0@example.org", seal("Newsletter", "text"), channel="mail",
             subject=seal("This week", "text"), html=seal("<p>Newsletter</p>", "text"))  # fmt: skip
    _message(pool, church, None, None)  # an erased recipient: every sealed column NULL
    conversation = str(uuid7())
    pool.run(
        "INSERT INTO conversations (id, church_id, church_number, contact_enc, contact_hash)"
        " VALUES (CAST(:id AS uuid), CAST(:c AS uuid), :n, :a, :h)",
        id=conversation, c=church, n=SENDER, a=seal(MEMBERS[0], "address"), h=crypto.lookup_hash(church, MEMBERS[0]),
    )  # fmt: skip
    for text in ("Please pray for my mother", "Thank you"):
        pool.run(
            "INSERT INTO conversation_messages (id, conversation_id, direction, body_enc)"
            " VALUES (CAST(:id AS uuid), CAST(:c AS uuid), 'inbound', :b)",
            id=str(uuid7()), c=conversation, b=seal(text, "text"),
        )  # fmt: skip


def _message(pool, church: str, to: str | None, body: bytes | None, *, broadcast: str | None = None,
             channel: str = "sms", subject: bytes | None = None, html: bytes | None = None) -> str:  # fmt: skip
    mid = str(uuid7())
    pool.run(
        "INSERT INTO messages (id, church_id, broadcast_id, channel, lane, to_enc, to_hash, from_address, body_enc,"
        " subject_enc, html_body_enc, status, deadline_at) VALUES (CAST(:id AS uuid), CAST(:c AS uuid),"
        " CAST(:b AS uuid), :ch, 'bulk', :t, :h, :f, :body, :s, :html, 'delivered', now() + interval '1 day')",
        id=mid, c=church, b=broadcast, ch=channel, t=None if to is None else crypto.seal(to, "address"),
        h=None if to is None else crypto.lookup_hash(church, to), f=SENDER, body=body, s=subject, html=html,
    )  # fmt: skip
    return mid


def _pk_select(table: rotation.SealedTable) -> str:
    return ", ".join(f"{n}::text" if t == "uuid" else f"encode({n}, 'hex')" if t == "bytea" else f"{n}::text"
                     for n, t in table.key)  # fmt: skip


def snapshot(pool) -> dict[tuple[str, tuple[str, ...], str], bytes | None]:
    """Every sealed value and lookup hash, raw, by (table, primary key, column)."""
    out: dict[tuple[str, tuple[str, ...], str], bytes | None] = {}
    for table in SEALED_TABLES:
        columns = [c.name for c in table.columns] + [c.hash for c in table.columns if c.hash]
        nk = len(table.key)
        for row in pool.run(f"SELECT {_pk_select(table)}, {', '.join(columns)} FROM {table.name}"):
            for column, value in zip(columns, row[nk:], strict=True):
                out[(table.name, tuple(row[:nk]), column)] = None if value is None else bytes(value)
    return out


def kinds() -> dict[tuple[str, str], crypto.Kind]:
    return {(t.name, c.name): c.kind for t in SEALED_TABLES for c in t.columns}


def opened(values: dict[tuple[str, tuple[str, ...], str], bytes | None], ring: Keyring) -> dict[Any, str | bytes | None]:
    k = kinds()
    return {key: (None if v is None else ring.open(v, k[(key[0], key[2])])) if (key[0], key[2]) in k else v
            for key, v in values.items()}  # fmt: skip


def sealed_only(values: dict[Any, bytes | None]) -> dict[Any, bytes]:
    k = kinds()
    return {key: v for key, v in values.items() if (key[0], key[2]) in k and v is not None}


def hashes(values: dict[Any, bytes | None]) -> dict[Any, bytes | None]:
    k = kinds()
    return {key: v for key, v in values.items() if (key[0], key[2]) not in k}


# -- fixtures ------------------------------------------------------------------------------------------------------


@pytest.fixture
def key_a(env) -> str:
    return env.encryption_key


@pytest.fixture
def filled(env, pool) -> Tenant:
    tenant = make_church(pool, members=MEMBERS, sender=SENDER)
    fill(pool, tenant)
    return tenant


def switch_to_new_key(monkeypatch, old: str) -> str:
    """The operator's step before a rotation: a new ENCRYPTION_KEY, the previous one in ENCRYPTION_KEYS_OLD."""
    new = base64.b64encode(os.urandom(32)).decode()
    set_env(monkeypatch, **{constants.ENCRYPTION_KEY_ENV: new, constants.ENCRYPTION_KEYS_OLD_ENV: old})
    return new


def under(values: dict[Any, bytes], key_b64: str) -> dict[Any, bytes]:
    kid = key_id(base64.b64decode(key_b64))
    return {k: v for k, v in values.items() if v[1:5] == kid}


# -- tests ---------------------------------------------------------------------------------------------------------


def test_the_table_of_sealed_columns_is_every_sealed_column_of_the_schema(pool):
    """One list (rotation.SEALED_TABLES): a sealed column added later without it would never be rotated."""
    found = {
        (r[0], r[1]) for r in pool.run(
            "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = current_schema()"
            " AND data_type = 'bytea' AND column_name LIKE '%\\_enc'")
    }  # fmt: skip
    assert found == {(t.name, c.name) for t in SEALED_TABLES for c in t.columns}
    for table in SEALED_TABLES:
        [[pk]] = pool.run(
            "SELECT array_agg(a.attname::text ORDER BY array_position(CAST(i.indkey AS int2[]), a.attnum)) FROM pg_index i"
            " JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)"
            " WHERE i.indrelid = CAST(:t AS regclass) AND i.indisprimary", t=table.name,
        )  # fmt: skip
        assert pk == [name for name, _ in table.key], table.name


def test_rotation_reseals_every_value_under_the_new_key(filled, key_a, pool, monkeypatch):
    before = snapshot(pool)
    ring_a = crypto.keyring()
    plaintext = opened(before, ring_a)
    sealed_before = sealed_only(before)
    assert len(sealed_before) == len(under(sealed_before, key_a)) > 30
    assert {(key[0], key[2]) for key in sealed_before} == set(kinds())  # the fill reached every sealed column
    shared_before = {before[k] for k in before if k[0] == "messages" and k[2] == "body_enc" and before[k]}

    key_b = switch_to_new_key(monkeypatch, key_a)
    seen: list[tuple[str, int, int, bool]] = []
    report = rotate(pool, batch_size=3, progress=lambda tp: seen.append((tp.table, tp.done, tp.total, tp.finished)))

    after = snapshot(pool)
    assert set(after) == set(before)
    sealed_after = sealed_only(after)
    assert set(sealed_after) == set(sealed_before)  # NULLs stayed NULL (the erased message), nothing went NULL
    assert under(sealed_after, key_b) == sealed_after
    assert not set(sealed_after.values()) & set(sealed_before.values())
    assert opened(after, crypto.keyring()) == plaintext
    assert hashes(after) == hashes(before)  # lookups never depend on ENCRYPTION_KEY
    # The broadcast's body, one seal stored in each of its messages, is still one value shared by them.
    assert len(shared_before) == 2
    assert len({after[k] for k in after if k[0] == "messages" and k[2] == "body_enc" and after[k]}) == 2

    assert report.resealed == len(sealed_before) and report.skipped == 0
    assert report.key_id == key_id(base64.b64decode(key_b)).hex()
    assert report.old_key_ids == [key_id(base64.b64decode(key_a)).hex()]
    assert report.audited and not report.already_done
    by_table = {t.table: t for t in report.tables}
    assert [t.table for t in report.tables] == [t.name for t in SEALED_TABLES]
    assert by_table["contacts"].total == by_table["contacts"].done == 8
    assert all(t.finished for t in report.tables)
    # Progress after each batch of 3 rows: contacts 3/8, 6/8, 8/8 (finished).
    assert [s for s in seen if s[0] == "contacts"] == [("contacts", 3, 8, False), ("contacts", 6, 8, False),
                                                       ("contacts", 8, 8, True)]  # fmt: skip
    assert [s for s in seen if s[0] == "broadcasts"] == [("broadcasts", 1, 1, True)]

    [[church, actor, target, details]] = pool.run(
        "SELECT church_id, actor, target, details FROM audit_log WHERE action = 'encryption_key.rotated'"
    )
    assert church is None and actor == "cli" and target == f"encryption_key:{report.key_id}"
    assert details["resealed"] == len(sealed_before) and details["tables"]["messages"] == 7 * 2 + 4
    assert pool.run("SELECT count(*) FROM key_rotations WHERE finished_at IS NOT NULL")[0][0] == len(SEALED_TABLES)

    # Done for key B: a second run scans nothing, changes nothing, audits nothing.
    again = rotate(pool, batch_size=3)
    assert again.already_done and again.resealed == 0 and not again.audited
    assert snapshot(pool) == after
    assert pool.run("SELECT count(*) FROM audit_log WHERE action = 'encryption_key.rotated'")[0][0] == 1

    # Key A is no longer needed: without it every value still opens.
    set_env(monkeypatch, **{constants.ENCRYPTION_KEYS_OLD_ENV: ""})
    assert opened(snapshot(pool), crypto.keyring()) == plaintext


def test_check_counts_values_under_each_key_and_changes_nothing(filled, key_a, pool, monkeypatch, capsys):
    key_b = switch_to_new_key(monkeypatch, key_a)
    id_a, id_b = (key_id(base64.b64decode(k)).hex() for k in (key_a, key_b))
    pool.run("UPDATE contacts SET first_name_enc = :n WHERE id = (SELECT id FROM contacts WHERE first_name_enc IS NOT NULL"
             " ORDER BY id LIMIT 1)", n=crypto.seal("Written under B", "name"))  # fmt: skip
    before = snapshot(pool)

    counts = key_counts(pool)
    assert snapshot(pool) == before
    got = {(c.table, c.column, c.key_id, c.state): c.count for c in counts}
    assert got[("contacts", "phone_enc", id_a, "old")] == 7
    assert got[("contacts", "email_enc", id_a, "old")] == 5
    assert got[("contacts", "first_name_enc", id_a, "old")] == 3
    assert got[("contacts", "first_name_enc", id_b, "current")] == 1
    assert got[("messages", "to_enc", id_a, "old")] == 8
    assert got[("messages", "subject_enc", id_a, "old")] == 1
    assert got[("opt_outs", "address_enc", id_a, "old")] == 3
    assert got[("conversation_messages", "body_enc", id_a, "old")] == 2
    remaining = sum(c.count for c in counts if c.state != "current")
    assert remaining == len(sealed_only(before)) - 1

    assert cli_main(["rotate-key", "--check"]) == 3
    out = capsys.readouterr().out
    assert f"current key {id_b}; ENCRYPTION_KEYS_OLD: {id_a}" in out
    assert "  contacts: 1 under the current key; 19 under old key " + id_a in out  # 7 phones, 5 emails, 3 + 4 names
    assert f"  messages: 18 under old key {id_a}" in out  # 8 recipients, 8 bodies, a subject, an HTML body
    assert f"{remaining:,} values remain under other keys: run `koinonia rotate-key`" in out
    assert snapshot(pool) == before

    # Without key A configured, its values are named as unreadable until it is added back.
    set_env(monkeypatch, **{constants.ENCRYPTION_KEYS_OLD_ENV: ""})
    assert {c.state for c in key_counts(pool) if c.key_id == id_a} == {"unknown"}
    assert cli_main(["rotate-key", "--check"]) == 3
    out = capsys.readouterr().out
    assert f"keys {id_a} are neither ENCRYPTION_KEY nor in ENCRYPTION_KEYS_OLD: add them to ENCRYPTION_KEYS_OLD" in out

    set_env(monkeypatch, **{constants.ENCRYPTION_KEYS_OLD_ENV: key_a})
    assert cli_main(["rotate-key", "--batch-size", "4"]) == 0
    out = capsys.readouterr().out
    assert f"rotate-key: re-sealing every value under another key with the current key {id_b} (old keys: {id_a}" in out
    contacts_lines = [line for line in out.splitlines() if line.startswith("rotate-key contacts [")]
    assert len(contacts_lines) == 2  # a line per batch that did something (not for the last, empty one)
    assert "] 4/8 (" in contacts_lines[0] and contacts_lines[1].endswith("] 8/8 (19 values re-sealed)")
    assert "rotate-key: contacts: done (19 values re-sealed)" in out
    assert f"rotate-key: done: {remaining:,} values re-sealed under key {id_b}; audit entry written" in out
    assert cli_main(["rotate-key", "--check"]) == 0
    out = capsys.readouterr().out
    assert "  contacts: 20 under the current key\n" in out and "under old key" not in out
    assert f"every sealed value is under the current key {id_b}; the old key(s) {id_a} can be removed" in out
    assert cli_main(["rotate-key"]) == 0
    assert "nothing to do: every table was already re-sealed" in capsys.readouterr().out


def test_a_value_erased_or_changed_while_the_batch_runs_is_never_brought_back(filled, key_a, pool, monkeypatch):
    key_b = switch_to_new_key(monkeypatch, key_a)
    church = filled.church_id
    targets = [r[0] for r in pool.run("SELECT id::text FROM messages WHERE to_enc IS NOT NULL ORDER BY id LIMIT 3")]
    erased, changed, deleted = targets
    new_body = crypto.seal("Edited while rotating", "text")
    calls: list[str] = []

    def meanwhile(table: str, keys: list[tuple[Any, ...]]) -> None:
        calls.append(table)
        if table != "messages":
            return
        assert {k[0] for k in keys} >= set(targets)  # read in this batch, not yet written
        # The application, on its own connections, commits while the rotation holds its read.
        pool.run("UPDATE messages SET to_enc = NULL, to_hash = NULL, body_enc = NULL, subject_enc = NULL,"
                 " html_body_enc = NULL WHERE id = CAST(:id AS uuid)", id=erased)  # fmt: skip
        pool.run("UPDATE messages SET body_enc = :b WHERE id = CAST(:id AS uuid)", b=new_body, id=changed)
        pool.run("DELETE FROM messages WHERE id = CAST(:id AS uuid)", id=deleted)

    report = rotate(pool, batch_size=500, before_write=meanwhile)
    assert calls.count("messages") == 1

    rows = {r[0]: r[1:] for r in pool.run(
        "SELECT id::text, to_enc, to_hash, body_enc, subject_enc, html_body_enc FROM messages"
        " WHERE id = ANY(CAST(:ids AS uuid[]))", ids=targets)}  # fmt: skip
    assert rows[erased] == [None] * 5  # stays erased
    assert deleted not in rows  # stays deleted
    to_enc, to_hash, body_enc = (bytes(v) for v in rows[changed][:3])
    assert body_enc == new_body  # the application's value, as written
    assert to_hash == crypto.lookup_hash(church, crypto.unseal(to_enc, "address"))
    assert to_enc[1:5] == key_id(base64.b64decode(key_b))  # its other column was still rotated
    messages = next(t for t in report.tables if t.table == "messages")
    # 18 values were read: the erased and the deleted row's recipient and body, and the changed body, stay as they are.
    assert (messages.skipped, messages.resealed) == (5, 18 - 5)
    assert {c.state for c in key_counts(pool)} == {"current"}


def test_a_killed_run_continues_where_it_stopped_without_resealing_what_it_did(filled, key_a, pool, monkeypatch):
    """A real SIGKILL of `koinonia rotate-key` after its first committed batch, then a second run."""
    key_b = switch_to_new_key(monkeypatch, key_a)
    contacts = [r[0] for r in pool.run("SELECT id::text FROM contacts ORDER BY id")]
    assert len(contacts) == 8
    before = snapshot(pool)
    first_values = sum(1 for k, v in sealed_only(before).items() if k[0] == "contacts" and k[1][0] in contacts[:3])
    # Hold a row of the second batch (contacts 4-6): the run commits batch 1, then waits on this lock.
    with pool.connection() as holder:
        holder.run("BEGIN")
        holder.run("SELECT 1 FROM contacts WHERE id = CAST(:id AS uuid) FOR UPDATE", id=contacts[4])
        proc = subprocess.Popen(
            [sys.executable, "-m", "common.cli", "rotate-key", "--batch-size", "3"],
            env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        try:
            lines = _reader(proc)
            _wait_for(lines, "rotate-key: re-sealing every value under another key with the current key")
            first = _wait_for(lines, "rotate-key contacts [")
            assert first.endswith(f"] 3/8 ({first_values} values re-sealed)"), first
            wait_for(lambda: pool.run(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )[0][0] == 1, timeout_s=20, what="the run to block on the locked row")  # fmt: skip
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
            holder.run("ROLLBACK")
    assert proc.returncode == -signal.SIGKILL
    # The killed session's open transaction dies with it on the server.
    wait_for(lambda: pool.run(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        " AND state <> 'idle'")[0][0] == 0, timeout_s=20, what="the killed session to end")  # fmt: skip

    id_b = key_id(base64.b64decode(key_b))
    killed = sealed_only(snapshot(pool))
    rotated = {k for k, v in killed.items() if v[1:5] == id_b}
    assert rotated == {k for k in killed if k[0] == "contacts" and k[1][0] in contacts[:3]}
    assert len(rotated) == first_values
    [[cursor, resealed, finished]] = pool.run(
        "SELECT cursor, resealed, finished_at IS NOT NULL FROM key_rotations WHERE table_name = 'contacts'")
    assert (cursor, resealed, finished) == ([contacts[2]], first_values, False)
    first_batch = {k: killed[k] for k in rotated}

    # Second run: continues after the third contact; the first batch is not re-sealed again.
    report = rotate(pool, batch_size=3)
    after = snapshot(pool)
    assert {k: after[k] for k in first_batch} == first_batch
    contacts_report = next(t for t in report.tables if t.table == "contacts")
    assert (contacts_report.total, contacts_report.done) == (5, 5)
    sealed = sealed_only(after)
    assert under(sealed, key_b) == sealed
    assert report.resealed + first_values == len(sealed) == 48
    assert opened(after, crypto.keyring()) == opened(before, crypto.keyring())
    [[details]] = pool.run("SELECT details FROM audit_log WHERE action = 'encryption_key.rotated'")
    assert details["resealed"] == 48 and details["tables"]["contacts"] == 20 == first_values + contacts_report.resealed


def test_an_interrupted_run_resumes_from_its_last_committed_batch(filled, key_a, pool, monkeypatch):
    switch_to_new_key(monkeypatch, key_a)

    class Stop(Exception):
        pass

    def stop_after_first_message_batch(tp: rotation.TableProgress) -> None:
        if tp.table == "messages":
            raise Stop

    with pytest.raises(Stop):
        rotate(pool, batch_size=4, progress=stop_after_first_message_batch)
    state = {r[0]: r[1:] for r in pool.run("SELECT table_name, resealed, finished_at IS NOT NULL FROM key_rotations")}
    assert state == {"contacts": [20, True], "opt_outs": [3, True], "opt_out_events": [3, True], "messages": [8, False]}
    assert not pool.run("SELECT 1 FROM audit_log WHERE action = 'encryption_key.rotated'")

    seen: list[rotation.TableProgress] = []
    report = rotate(pool, batch_size=4, progress=seen.append)
    assert [t.table for t in seen if t.earlier] == ["contacts", "opt_outs", "opt_out_events"]
    messages = next(t for t in report.tables if t.table == "messages")
    assert (messages.total, messages.resealed) == (4, 18 - 8)  # 8 rows with values, 4 done before; 18 values, 8 done
    assert report.resealed == 10 + 1 + 1 + 2 and report.audited
    assert {c.state for c in key_counts(pool)} == {"current"}


def test_values_under_a_key_nobody_configured_stop_the_run_with_what_to_do(filled, key_a, pool, monkeypatch, capsys):
    switch_to_new_key(monkeypatch, key_a)
    stray = base64.b64encode(os.urandom(32)).decode()
    stray_ring = Keyring(base64.b64decode(stray), lookup=b"x" * 32)
    [[conversation]] = pool.run("SELECT id::text FROM conversations")
    pool.run("UPDATE conversations SET contact_enc = :a", a=stray_ring.seal(MEMBERS[0], "address"))
    stray_id = key_id(base64.b64decode(stray)).hex()

    with pytest.raises(RotationError) as err:
        rotate(pool, batch_size=500)
    message = str(err.value)
    assert f"conversations.contact_enc of the row id={conversation}" in message
    assert f"key id {stray_id}" in message and "add that key to ENCRYPTION_KEYS_OLD" in message
    assert MEMBERS[0] not in message
    assert cli_main(["rotate-key"]) == 1
    err_out = capsys.readouterr().err
    assert "rotate-key: stopped: conversations.contact_enc" in err_out and "add that key to ENCRYPTION_KEYS_OLD" in err_out
    # What came before it is done and kept; the tables after it wait.
    finished = {r[0] for r in pool.run("SELECT table_name FROM key_rotations WHERE finished_at IS NOT NULL")}
    assert finished == {"contacts", "opt_outs", "opt_out_events", "messages", "broadcasts"}

    # A value altered at rest is named too, with what can be done about it.
    set_env(monkeypatch, **{constants.ENCRYPTION_KEYS_OLD_ENV: f"{key_a},{stray}"})
    [[body_id, body]] = pool.run("SELECT id::text, body_enc FROM conversation_messages ORDER BY id LIMIT 1")
    pool.run("UPDATE conversation_messages SET body_enc = :b WHERE id = CAST(:id AS uuid)",
             b=bytes(body[:-1]) + bytes([body[-1] ^ 1]), id=body_id)  # fmt: skip
    with pytest.raises(RotationError, match=f"conversation_messages.body_enc of the row id={body_id}: .*failed authentication.*"
                                            "restore that row from a backup"):  # fmt: skip
        rotate(pool)
    pool.run("UPDATE conversation_messages SET body_enc = :b WHERE id = CAST(:id AS uuid)", b=body, id=body_id)
    assert rotate(pool).audited
    assert {c.state for c in key_counts(pool)} == {"current"}


def test_one_rotation_at_a_time_and_rescan_finds_late_old_key_values(filled, key_a, pool, monkeypatch):
    switch_to_new_key(monkeypatch, key_a)

    def second_run(table: str, _keys: list[tuple[Any, ...]]) -> None:
        if table == "contacts":
            with pytest.raises(RotationBusy, match="another `koinonia rotate-key` is running"):
                rotate(pool)

    rotate(pool, before_write=second_run)
    # A process still configured with key A wrote a value after its table was done.
    old_ring = Keyring(base64.b64decode(key_a), lookup=b"x" * 32)
    pool.run("UPDATE contacts SET last_name_enc = :n WHERE id = (SELECT id FROM contacts ORDER BY id LIMIT 1)",
             n=old_ring.seal("Late", "name"))  # fmt: skip
    assert rotate(pool).already_done
    assert [c.count for c in key_counts(pool) if c.state == "old"] == [1]
    report = rotate(pool, rescan=True)
    assert report.resealed == 1 and report.audited
    assert {c.state for c in key_counts(pool)} == {"current"}
    assert pool.run("SELECT count(*) FROM audit_log WHERE action = 'encryption_key.rotated'")[0][0] == 2


def test_an_unmigrated_database_is_refused_with_what_to_do(env, pool, capsys):
    pool.run("DROP TABLE key_rotations")
    with pytest.raises(RotationError, match="run `koinonia migrate` first"):
        rotate(pool)
    assert cli_main(["rotate-key"]) == 1
    assert "rotate-key: stopped: this database has no key_rotations table yet" in capsys.readouterr().err


# -- subprocess helpers ----------------------------------------------------------------------------------------------


def _reader(proc: subprocess.Popen[str]) -> queue.Queue[str]:
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line.rstrip("\n"))

    threading.Thread(target=pump, daemon=True).start()
    return lines


def _wait_for(lines: queue.Queue[str], prefix: str, timeout: float = 60.0) -> str:
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=0.2)
        except queue.Empty:
            continue
        seen.append(line)
        if line.startswith(prefix):
            return line
    raise AssertionError(f"no line starting {prefix!r}; output: {seen}")

