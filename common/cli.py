"""``koinonia``: the operator command.

    koinonia migrate        apply pending SQL migrations (safe to run twice, or twice at once)
    koinonia seed           create the demo church; prints its API key once
    koinonia check          check configuration, PostgreSQL and Redis; exit 1 if anything is wrong
    koinonia consume        drain the queue through the carrier (``--forever``: the local worker)
    koinonia dlq            list, replay, purge, archive dead letters (operators)
    koinonia keys           create, list, revoke a church's API keys (operators; a new key is printed once)
    koinonia delete         erase a person from a church, or delete a whole church (operators)
    koinonia dev            run the whole local stack (embedded PostgreSQL/Redis when no URL is set)
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from common import constants
from common.auth.cli import register as register_keys
from common.config import ConfigurationError, load_settings
from common.db.pool import DatabaseUnavailable, Pool
from common.dead_letters.cli import register as register_dlq
from common.privacy.cli import register as register_delete
from common.redis_client import RedisGate, RedisUnavailable


def _say(line: str) -> None:
    print(line, flush=True)


def _pool() -> Pool:
    return Pool(load_settings().database)


def cmd_migrate(_args: argparse.Namespace) -> int:
    from common.db.migrate import migrate

    pool = _pool()
    try:
        migrate(pool, progress=_say)
    finally:
        pool.close()
    return 0


def cmd_seed(_args: argparse.Namespace) -> int:
    from common.seed import seed_demo

    pool = _pool()
    try:
        demo = seed_demo(pool)
    finally:
        pool.close()
    _say(f"demo church {demo.church_id}: sender {demo.sender}, group {demo.group_id} ({demo.member_count} members)")
    _say(f"API key (shown once): {demo.api_key}")
    return 0


def cmd_check(_args: argparse.Namespace) -> int:
    settings = load_settings()
    _say(f"configuration: ok (APP_ENV={settings.app_env})")
    failures = 0
    pool = Pool(settings.database)
    try:
        version = pool.run("SHOW server_version")[0][0]
        _say(f"postgresql: ok ({settings.database.describe()}, server {version})")
    except DatabaseUnavailable as exc:
        _say(f"postgresql: FAILED: {exc}")
        failures += 1
    finally:
        pool.close()
    if settings.enable_queues:
        gate = RedisGate(settings.redis_url, prefix=settings.redis_key_prefix)
        try:
            gate.call(lambda client: client.ping())
            _say("redis: ok")
        except RedisUnavailable as exc:
            _say(f"redis: FAILED: {exc}; start Redis or set REDIS_URL (sending still works inline)")
            failures += 1
        finally:
            gate.close()
    else:
        _say("redis: not used (ENABLE_QUEUES=false)")
    return 1 if failures else 0


def cmd_consume(args: argparse.Namespace) -> int:
    """Run queue-consume in this process: one budget, or forever (the local stack's worker)."""
    import asyncio

    from common.consume import ConsumeBudget, run_consumer
    from common.logs import configure_logging
    from common.runtime import get_runtime

    configure_logging()
    rt = get_runtime()
    budget = ConsumeBudget(max_messages=args.max_messages, max_seconds=args.max_seconds, stop_when_idle=not args.forever)
    while True:
        report = asyncio.run(run_consumer(rt, budget))
        if report.dequeued or not args.forever:
            _say(f"consume: {report.as_dict()}")
        if not args.forever:
            return 0


def cmd_dev(args: argparse.Namespace) -> int:
    from infra.devstack import run_dev_stack

    return run_dev_stack(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="koinonia", description="Koinonia messaging operator command")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("migrate", help="apply pending SQL migrations").set_defaults(func=cmd_migrate)
    sub.add_parser("seed", help="create the demo church and print its API key").set_defaults(func=cmd_seed)
    sub.add_parser("check", help="check configuration, PostgreSQL and Redis").set_defaults(func=cmd_check)
    consume = sub.add_parser("consume", help="drain the queue through the carrier (what queue-consume does)")
    consume.add_argument("--forever", action="store_true", help="keep consuming (the local stack's worker)")
    consume.add_argument("--max-messages", type=int, default=100_000)
    consume.add_argument("--max-seconds", type=float, default=50.0, help="budget of one round")
    consume.set_defaults(func=cmd_consume)
    register_dlq(sub)
    register_keys(sub)
    register_delete(sub)
    dev = sub.add_parser("dev", help="run the local stack (Ctrl-C stops everything)")
    dev.add_argument(
        "--home",
        default=os.environ.get(constants.KOINONIA_HOME_ENV, ".koinonia"),
        help="folder for embedded data and logs (default $KOINONIA_HOME or .koinonia)",
    )
    dev.add_argument("--base-port", type=int, default=8080, help="first port; functions take the next ones")
    dev.set_defaults(func=cmd_dev)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except ConfigurationError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    except DatabaseUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return code


if __name__ == "__main__":
    raise SystemExit(main())
