"""``koinonia analytics``: rebuild the daily aggregates from the tables (operators).

    koinonia analytics rebuild [--church ID] [--since YYYY-MM-DD] [--days-per-batch N]
"""

from __future__ import annotations

import argparse
from datetime import date
from typing import Any

from common.cli_support import guarded, positive_int, runtime, say, uuid_arg


def _day(value: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a day (YYYY-MM-DD)") from None


@guarded("analytics", "analytics_command")
def cmd_rebuild(args: argparse.Namespace) -> int:
    from common.analytics.rebuild import rebuild

    rt = runtime()
    report = rebuild(rt.pool, church_id=args.church, since=args.since, days_per_batch=args.days_per_batch, progress=say)
    say(f"analytics rebuild: {report.churches} church(es), {report.days} day(s), {report.rows} row(s) written, "
        f"{report.removed} removed in {report.seconds:.1f} s")  # fmt: skip
    return 0


def register(sub: Any) -> None:
    analytics = sub.add_parser("analytics", help="daily aggregates: rebuild them from the tables")
    commands = analytics.add_subparsers(dest="analytics_command", required=True)
    rebuild = commands.add_parser("rebuild", help="recompute whole days of aggregates (all churches, or one)")
    rebuild.add_argument("--church", type=uuid_arg, help="only this church")
    rebuild.add_argument("--since", type=_day, help="from this day (the church's calendar) to today; default: its first")
    rebuild.add_argument("--days-per-batch", type=positive_int, default=31, help="days per transaction (default 31)")
    rebuild.set_defaults(func=cmd_rebuild)
