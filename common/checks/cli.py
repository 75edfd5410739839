"""``koinonia check redis`` and ``koinonia check failover``: the argparse side (the checks are in this package).

``koinonia check`` alone keeps doing what it always did (configuration, PostgreSQL, Redis reachable:
``common/cli.py``); these are optional subcommands under it.
"""

from __future__ import annotations

import argparse

from common.cli_support import runtime, say, uuid_arg
from common.phones import InvalidPhone, normalize


def register(check: argparse.ArgumentParser) -> None:
    """Add the deeper checks as optional subcommands of ``koinonia check``."""
    check.usage = "%(prog)s [-h] [{redis,failover} ...]"  # argparse would show the subcommand as required
    sub = check.add_subparsers(
        dest="check_target", metavar="{redis,failover}", title="deeper checks",
        description="without one, `koinonia check` checks configuration, PostgreSQL and Redis are reachable",
    )  # fmt: skip
    redis_check = sub.add_parser(
        "redis", help="run each command family the queue needs against REDIS_URL, diagnose failures",
        description="PING, SET/GET, TTL, DEL, INCR, LPUSH/LPOP and a Lua script on throwaway keys under "
        "REDIS_KEY_PREFIX (deleted at the end), each with its latency and, when it fails, what to change; then the "
        "server's version, maxmemory-policy and persistence. The password in REDIS_URL is never printed.",
        epilog="exit status: 0 every step passed, 1 a step failed, 2 bad configuration",
    )
    redis_check.set_defaults(func=cmd_check_redis)
    failover = sub.add_parser(
        "failover", help="send a real text with Redis unavailable (inline) and one through Redis, verify both",
        description="Proves that sending falls back inline without Redis and goes through Redis again when it is "
        "back, on this deployment's PostgreSQL, Redis and carrier, through the real send path (the church's rate "
        "limits and quota apply). It SENDS 2 REAL TEXTS to the --to number: give your own phone.",
        epilog="exit status: 0 both phases reached the carrier exactly once, 1 a phase failed (each with what to do), "
        "2 bad configuration",
    )
    failover.add_argument("--church", required=True, type=uuid_arg, metavar="ID", help="the church that sends (its id)")
    failover.add_argument(
        "--to", required=True, type=phone_arg, metavar="+E164", help="YOUR phone number: it receives the 2 check texts"
    )
    failover.add_argument(
        "--consume-seconds", type=positive_seconds, default=30.0, metavar="S",
        help="how long phase 2 waits for the queued text to be sent (default 30)",
    )  # fmt: skip
    failover.set_defaults(func=cmd_check_failover)


def cmd_check_redis(_args: argparse.Namespace) -> int:
    from common.checks.redis_check import check_redis
    from common.config import load_settings

    return check_redis(load_settings(), say)


def cmd_check_failover(args: argparse.Namespace) -> int:
    from common.checks.failover import FailoverCheck

    check = FailoverCheck(runtime(), args.church, args.to, say, consume_seconds=args.consume_seconds)
    return check.run()


def phone_arg(value: str) -> str:
    try:
        return normalize(value)
    except InvalidPhone as exc:  # the value is not repeated: it is a phone number, or meant to be
        raise argparse.ArgumentTypeError(f"not a phone number ({exc.reason}); give it as +E.164, e.g. +13125550142") from None


def positive_seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = 0.0
    if not 0 < seconds <= 900:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of seconds between 0 and 900")
    return seconds
