"""``koinonia delete``: erase a person from a church, or delete a whole church (operators).

    koinonia delete person --church ID --phone NUMBER    erase one person's data from one church
    koinonia delete church ID [--yes]                    delete the church and everything of it

Both are idempotent (run again after an interruption, or to check: a second run changes nothing) and
print progress as they go. Church deletion asks for confirmation unless ``--yes``; what it keeps is
the church's billing counts (``usage_archive``) and its audit trail. Numbers and texts are never
printed.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from common.cli_support import confirm as _confirm
from common.cli_support import guarded
from common.cli_support import positive_int as _positive
from common.cli_support import runtime as _runtime
from common.cli_support import say as _say
from common.cli_support import uuid_arg as _uuid

if TYPE_CHECKING:
    from common.privacy.deletion import PersonDeletion
    from common.redis_client import RedisGate
    from common.runtime import Runtime

ACTOR = "cli"

_guarded = guarded("delete", "delete_command")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``delete`` and its subcommands to the ``koinonia`` command."""
    delete = subparsers.add_parser("delete", help="data deletion: erase a person, or delete a church")
    sub = delete.add_subparsers(dest="delete_command", required=True)

    person = sub.add_parser("person", help="erase one person's data (by phone number) from one church")
    person.add_argument("--church", required=True, type=_uuid, help="the church's id")
    person.add_argument("--phone", required=True, help="the person's number, in any common format")
    person.add_argument("--batch-size", type=_positive, default=1000, help="messages per transaction (default 1000)")
    person.set_defaults(func=_guarded(cmd_delete_person))

    church = sub.add_parser("church", help="delete a church and all its data (keeps billing counts and audit trail)")
    church.add_argument("church_id", type=_uuid, metavar="ID", help="the church's id")
    church.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    church.add_argument("--batch-size", type=_positive, default=1000, help="rows per transaction (default 1000)")
    church.set_defaults(func=_guarded(cmd_delete_church))


def cmd_delete_person(args: argparse.Namespace) -> int:
    from common.privacy.deletion import delete_person

    rt = _runtime()

    def progress(report: PersonDeletion) -> None:
        _say(f"delete person: {report.messages:,} messages erased so far")

    report = delete_person(
        rt.pool, args.church, args.phone, actor=ACTOR, redis=_redis(rt), batch_size=args.batch_size, progress=progress
    )
    if not report.changed:
        _say("delete person: nothing of this number was left in that church (already erased, or never there)")
        return 0
    counts = report.counts()
    _say(
        f"delete person: erased {counts['messages']:,} messages ({counts['cancelled']:,} still pending, now never sent),"
        f" {counts['dead_letters']:,} dead letters, {counts['broadcasts']:,} broadcast answers,"
        f" {counts['receipts']:,} carrier receipts"
    )
    _say(
        f"delete person: deleted {counts['conversations']:,} conversations ({counts['conversation_messages']:,} texts),"
        f" {counts['opt_out_events']:,} opt-out events, {counts['contacts']:,} contacts"
        f" ({counts['group_memberships']:,} group memberships)"
    )
    if report.suppression_kept:
        _say("delete person: they had opted out, so the number stays blocked for this church (a keyed hash is kept)")
    if report.redis_error:
        _say(f"delete person: {report.redis_error}; cancelled messages are dropped by consumers (they cannot be sent)")
    return 0


def cmd_delete_church(args: argparse.Namespace) -> int:
    from common.dead_letters.cli import ProgressBar
    from common.privacy.deletion import RedisNotCleared, UnknownChurch, church_summary, delete_church

    rt = _runtime()
    try:
        name, counts = church_summary(rt.pool, args.church_id)
    except UnknownChurch:
        counts, name = {}, ""
    if counts:
        listed = ", ".join(f"{n:,} {table}" for table, n in counts.items() if n) or "no rows"
        if not args.yes and not _confirm(
            f"delete church {name!r} ({args.church_id}) and all its data ({listed})? "
            "Only its billing counts and audit trail are kept. [y/N] "
        ):
            _say("delete church: nothing deleted (confirm interactively, or add --yes)")
            return 1
    bars: dict[str, ProgressBar] = {}

    def progress(what: str, done: int) -> None:
        if what in ("usage_archive", "redis", "churches"):
            for previous in bars.values():
                previous.finish()
            _say({"usage_archive": f"delete church: billing counts kept ({done:,} usage_archive rows written)",
                  "redis": f"delete church: Redis swept ({done:,} queued ids and keys removed)",
                  "churches": "delete church: church row deleted, audit entry written"}[what])  # fmt: skip
            return
        bar = bars.get(what)
        if bar is None:
            for previous in bars.values():
                previous.finish()
            bar = bars[what] = ProgressBar(f"delete {what}", counts.get(what) or None)
        bar.update(done, "")

    try:
        report = delete_church(rt.pool, args.church_id, actor=ACTOR, progress=progress, redis=_redis(rt),
                               batch_size=args.batch_size)  # fmt: skip
    except RedisNotCleared as exc:
        _say(f"delete church: {exc}", sys.stderr)
        return 1
    for bar in bars.values():
        bar.finish()
    if report.already_deleted:
        _say(f"delete church: {args.church_id} was already deleted; nothing left in PostgreSQL"
             + (f", {report.redis_ids + report.redis_keys:,} Redis entries cleared" if report.redis_ids or report.redis_keys
                else ""))  # fmt: skip
        return 0
    total = sum(report.rows.values())
    _say(f"delete church: {args.church_id} deleted ({total:,} rows; {report.usage_archive_rows:,} usage_archive rows kept,"
         f" {report.redis_ids:,} queued ids and {report.redis_keys:,} Redis keys cleared)")  # fmt: skip
    return 0


# -- helpers ------------------------------------------------------------------------------------------------------


def _redis(rt: Runtime) -> RedisGate | None:
    return rt.redis if rt.settings.enable_queues else None


