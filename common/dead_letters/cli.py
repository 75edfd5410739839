"""``koinonia dlq``: dead letters for operators (all churches; ``--church`` narrows to one).

    koinonia dlq list    [--church ID] [--code C] [--limit N] [--cursor C]
    koinonia dlq replay  (--ids ID... | --code C | --all) [--church ID]
    koinonia dlq purge   (--ids ID... | --older-than-days N | --code C) [--church ID] [--yes]
    koinonia dlq archive [--older-than-days N] [--church ID]

Bulk work prints a progress bar (a line per batch when the output is not a terminal). The list shows
recipients masked (``+1******0142``): operators see every church's data, and terminals get copied
into tickets.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, TextIO

from common.cli_support import confirm as _confirm
from common.cli_support import guarded
from common.cli_support import positive_int as _positive
from common.cli_support import runtime as _runtime
from common.cli_support import say as _say
from common.cli_support import uuid_arg as _uuid
from common.logs import mask_address

if TYPE_CHECKING:
    from common.dead_letters.replay import ReplayReport

_guarded = guarded("dlq", "dlq_command")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``dlq`` and its subcommands to the ``koinonia`` command."""
    dlq = subparsers.add_parser("dlq", help="dead letters: list, replay, purge, archive")
    sub = dlq.add_subparsers(dest="dlq_command", required=True)

    listing = sub.add_parser("list", help="dead letters, newest first")
    listing.add_argument("--church", type=_uuid, help="only this church's")
    listing.add_argument("--code", help="only this carrier error code, e.g. 40310")
    listing.add_argument("--limit", type=_positive, default=50, help="rows (1-500, default 50)")
    listing.add_argument("--cursor", help="the 'next:' value a previous list printed")
    listing.set_defaults(func=_guarded(cmd_list))

    replay = sub.add_parser("replay", help="put failed messages back on the queue (each sends once)")
    which = replay.add_mutually_exclusive_group(required=True)
    which.add_argument("--ids", nargs="+", type=_uuid, metavar="ID", help="these dead letters")
    which.add_argument("--code", help="every dead letter with this error code")
    which.add_argument("--all", action="store_true", help="every dead letter")
    replay.add_argument("--church", type=_uuid, help="only this church's")
    replay.add_argument("--batch-size", type=_positive, default=1000, help="dead letters per transaction (default 1000)")
    replay.set_defaults(func=_guarded(cmd_replay))

    purge = sub.add_parser("purge", help="delete dead-letter rows (their messages stay failed)")
    purge.add_argument("--ids", nargs="+", type=_uuid, metavar="ID", help="these dead letters")
    purge.add_argument("--older-than-days", type=_days, metavar="N", help="created more than N days ago")
    purge.add_argument("--code", help="with this error code")
    purge.add_argument("--church", type=_uuid, help="only this church's")
    purge.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    purge.add_argument("--batch-size", type=_positive, default=1000, help="dead letters per transaction (default 1000)")
    purge.set_defaults(func=_guarded(cmd_purge))

    archive = sub.add_parser("archive", help="move old dead letters to dead_letters_archive")
    archive.add_argument("--older-than-days", type=_days, metavar="N", help="default: DLQ_RETENTION_DAYS")
    archive.add_argument("--church", type=_uuid, help="only this church's")
    archive.add_argument("--batch-size", type=_positive, default=1000, help="dead letters per transaction (default 1000)")
    archive.set_defaults(func=_guarded(cmd_archive))


# -- commands -------------------------------------------------------------------------------------------------


def cmd_list(args: argparse.Namespace) -> int:
    from common.dead_letters import queries
    from common.dead_letters.access import Scope

    if args.limit > queries.max_limit:
        _say(f"dlq list: --limit is at most {queries.max_limit}", sys.stderr)
        return 2
    rt = _runtime()
    selection = queries.Filter(church_id=args.church, error_code=args.code)
    page = queries.list_page(rt.pool, Scope.operator(), selection, limit=args.limit, cursor=args.cursor)
    if not page.rows:
        _say("no dead letters")
        return 0
    header = ("created_at", "id", "church", "code", "replays", "status", "to", "reason")
    table = [header] + [
        (r.created_at.isoformat(timespec="seconds"), r.id, r.church_id[:8], r.error_code or "-", str(r.replay_count),
         r.status, mask_address(r.to_address), r.reason)
        for r in page.rows
    ]  # fmt: skip
    widths = [max(len(row[i]) for row in table) for i in range(len(header) - 1)]
    for row in table:
        _say("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)) + "  " + row[-1])
    _say(f"{len(page.rows)} shown" + (f"; next: {page.next_cursor}" if page.next_cursor else ""))
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from common.dead_letters import queries, replay
    from common.dead_letters.access import Scope

    rt = _runtime()
    scope = Scope.operator()
    if args.ids:
        bar = ProgressBar("replay", len(set(args.ids)))
        if args.church:  # narrow the ids to that church: others count as not found
            scope = Scope.church(args.church)
        report = replay.replay_ids(
            rt, scope, args.ids, batch_size=args.batch_size, progress=lambda r: bar.update(r.processed, _replay_detail(r)),
            actor="cli",
        )
    else:
        selection = queries.Filter(church_id=args.church, error_code=args.code)
        bar = ProgressBar("replay", queries.count_matching(rt.pool, scope, selection))
        report = replay.replay_matching(
            rt, scope, selection, batch_size=args.batch_size, progress=lambda r: bar.update(r.processed, _replay_detail(r)),
            actor="cli",
        )
    bar.finish()
    _say(f"dlq replay: {report.replayed:,} replayed, {report.skipped:,} skipped (message no longer failed), "
         f"{report.not_found:,} not found")  # fmt: skip
    if report.left_queued:
        _say(f"dlq replay: {report.left_queued:,} left queued in PostgreSQL ({report.redis_error or 'queues disabled'});"
             " the retry-scheduler will enqueue or send them")  # fmt: skip
    elif report.replayed:
        _say(f"dlq replay: {report.enqueued:,} enqueued")
    return 0


def cmd_purge(args: argparse.Namespace) -> int:
    from common.dead_letters import queries, retention
    from common.dead_letters.access import Scope

    if args.ids and (args.code or args.older_than_days is not None):
        _say("dlq purge: give --ids, or --code and/or --older-than-days, not both", sys.stderr)
        return 2
    if not args.ids and not args.code and args.older_than_days is None:
        _say("dlq purge: say which: --ids ID..., --code C or --older-than-days N", sys.stderr)
        return 2
    rt = _runtime()
    scope = Scope.church(args.church) if args.church else Scope.operator()
    selection = queries.Filter(error_code=args.code, older_than_days=args.older_than_days)
    if args.ids:
        total = len(set(args.ids))
        what = f"up to {total:,} dead letters (by id)"
    else:
        total = queries.count_matching(rt.pool, scope, selection)
        what = f"{total:,} dead letters"
    if total == 0:
        _say("dlq purge: nothing to purge")
        return 0
    if not args.yes and not _confirm(f"purge {what}? Their messages stay failed. [y/N] "):
        _say("dlq purge: nothing purged (confirm interactively, or add --yes)")
        return 1
    bar = ProgressBar("purge", total)
    if args.ids:
        report = retention.purge_ids(
            rt.pool, scope, args.ids, batch_size=args.batch_size, progress=lambda r: bar.update(r.done + r.not_found, ""),
            actor="cli",
        )
    else:
        report = retention.purge_matching(
            rt.pool, scope, selection, batch_size=args.batch_size, progress=lambda r: bar.update(r.done, ""), actor="cli"
        )
    bar.finish()
    _say(f"dlq purge: {report.done:,} purged" + (f", {report.not_found:,} not found" if report.not_found else ""))
    return 0


def cmd_archive(args: argparse.Namespace) -> int:
    from common.dead_letters import retention
    from common.dead_letters.access import Scope

    rt = _runtime()
    days = args.older_than_days if args.older_than_days is not None else rt.settings.dlq_retention_days
    bar = ProgressBar("archive", None)
    report = retention.archive_older_than(
        rt.pool,
        Scope.operator(),
        days,
        church_id=args.church,
        batch_size=args.batch_size,
        progress=lambda r: bar.update(r.done, ""),
    )
    bar.finish()
    _say(f"dlq archive: {report.done:,} moved to dead_letters_archive (created more than {days} days ago)")
    return 0


# -- helpers ------------------------------------------------------------------------------------------------------


class ProgressBar:
    """``replay [########------------] 2,000/5,000 (...)``: redrawn in place on a terminal, else a line per batch."""

    width = 24

    def __init__(self, verb: str, total: int | None, stream: TextIO | None = None) -> None:
        self.verb = verb
        self.total = total
        self.stream = stream if stream is not None else sys.stdout
        self.tty = self.stream.isatty()
        self.drawn = False

    def update(self, done: int, detail: str) -> None:
        if self.total:
            filled = min(self.width, self.width * done // self.total)
            line = f"{self.verb} [{'#' * filled}{'-' * (self.width - filled)}] {done:,}/{self.total:,}"
        else:
            line = f"{self.verb}: {done:,} so far"
        if detail:
            line += f" ({detail})"
        if self.tty:
            self.stream.write("\r" + line + "\x1b[K")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()
        self.drawn = True

    def finish(self) -> None:
        if self.tty and self.drawn:
            self.stream.write("\n")
            self.stream.flush()


def _replay_detail(report: ReplayReport) -> str:
    return f"{report.replayed:,} replayed, {report.skipped:,} skipped"


def _days(value: str) -> int:
    if not value.isdigit():
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number of days")
    return int(value)
