"""``koinonia``: the operator command.

    koinonia migrate        apply pending SQL migrations (safe to run twice, or twice at once)
    koinonia seed           create the demo church; prints its API key once
    koinonia check          check configuration, PostgreSQL and Redis; exit 1 if anything is wrong
    koinonia check redis    every Redis command family the queue needs, with latency and a diagnosis per failure
    koinonia check failover send a real text without Redis (inline) and one through Redis; verify both (``--to``)
    koinonia consume        drain the queue through the carrier (``--forever``: the local worker)
    koinonia dlq            list, replay, purge, archive dead letters (operators)
    koinonia keys           create, list, revoke a church's API keys (operators; a new key is printed once)
    koinonia delete         erase a person from a church, or delete a whole church (operators)
    koinonia analytics      rebuild the daily aggregates from the tables (operators)
    koinonia rotate-key     re-seal stored data under a new ENCRYPTION_KEY (``--check``: count what is left)
    koinonia mail sent      list what the local SES (moto, started by ``koinonia dev``) has sent
    koinonia dev            run the whole local stack (embedded PostgreSQL/Redis when no URL is set)
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from common import constants
from common.analytics.cli import register as register_analytics
from common.auth.cli import register as register_keys
from common.checks.cli import register as register_checks
from common.cli_support import positive_int, say
from common.config import ConfigurationError, load_settings
from common.db.pool import DatabaseUnavailable, Pool
from common.dead_letters.cli import register as register_dlq
from common.mail.cli import register as register_mail
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
    if args.metrics_port is not None:  # the local worker's counts and carrier latencies, scrapeable
        from common.metrics.server import MetricsServerError, start_metrics_server

        try:
            served = start_metrics_server(args.metrics_host, args.metrics_port)
        except MetricsServerError as exc:
            print(f"consume: {exc}", file=sys.stderr, flush=True)
            return 2
        _say(f"consume: metrics on {served.url}")
    rt = get_runtime()
    budget = ConsumeBudget(max_messages=args.max_messages, max_seconds=args.max_seconds, stop_when_idle=not args.forever)
    while True:
        report = asyncio.run(run_consumer(rt, budget))
        if report.dequeued or not args.forever:
            _say(f"consume: {report.as_dict()}")
        if not args.forever:
            return 0


def cmd_rotate_key(args: argparse.Namespace) -> int:
    """Exit 0: done (``--check``: nothing left under another key); 1: stopped by an error; 3: ``--check`` found some."""
    from common.dead_letters.cli import ProgressBar
    from common.privacy import rotation
    from common.privacy.crypto import keyring

    settings = load_settings()
    ring = keyring()
    current = ring.current_id.hex()
    old = [k for k in ring.known_ids if k != current]
    pool = Pool(settings.database)
    try:
        if args.check:
            return _rotate_check(pool, current, old)
        say(f"rotate-key: re-sealing every value under another key with the current key {current}"
            f" (old keys: {', '.join(old) or 'none configured'}; batches of {args.batch_size:,})")  # fmt: skip
        bars: dict[str, ProgressBar] = {}
        drawn: dict[str, int] = {}

        def progress(tp: rotation.TableProgress) -> None:
            if tp.earlier:
                say(f"rotate-key: {tp.table}: already finished for key {current} (not scanned again; --rescan scans it)")
                return
            if tp.done and drawn.get(tp.table) != tp.done:  # (a last, empty batch only finishes the table)
                bar = bars.setdefault(tp.table, ProgressBar(f"rotate-key {tp.table}", max(tp.total, tp.done)))
                bar.total = max(tp.total, tp.done)
                skipped = f", {tp.skipped:,} changed meanwhile" if tp.skipped else ""
                bar.update(tp.done, f"{_values(tp.resealed)} re-sealed{skipped}")
                drawn[tp.table] = tp.done
            if tp.finished:
                if tp.table in bars:
                    bars[tp.table].finish()
                if not tp.done:
                    say(f"rotate-key: {tp.table}: nothing (left) to re-seal")
                    return
                skipped = f", {tp.skipped:,} changed or erased meanwhile and left as they were" if tp.skipped else ""
                say(f"rotate-key: {tp.table}: done ({_values(tp.resealed)} re-sealed{skipped})")

        try:
            report = rotation.rotate(pool, batch_size=args.batch_size, rescan=args.rescan, progress=progress)
        except rotation.RotationError as exc:
            for bar in bars.values():
                bar.finish()
            say(f"rotate-key: stopped: {exc}", sys.stderr)
            say("rotate-key: the batches done so far are kept; the next run continues from there", sys.stderr)
            return 1
        if report.already_done:
            say(f"rotate-key: nothing to do: every table was already re-sealed under key {current}"
                " (--rescan scans them again, e.g. for values written by a process still on an old key)")  # fmt: skip
        else:
            say(f"rotate-key: done: {_values(report.resealed)} re-sealed under key {current}"
                + (f" ({report.skipped:,} changed or erased meanwhile, left as they were)" if report.skipped else "")
                + ("; audit entry written" if report.audited else ""))  # fmt: skip
        say("rotate-key: next: `koinonia rotate-key --check`; when it finds nothing left, remove the old key(s) from"
            " ENCRYPTION_KEYS_OLD")  # fmt: skip
        return 0
    finally:
        pool.close()


def _values(n: int) -> str:
    return f"{n:,} value" + ("" if n == 1 else "s")


def _rotate_check(pool: Pool, current: str, old: list[str]) -> int:
    from common.privacy.rotation import SEALED_TABLES, key_counts

    counts = key_counts(pool)
    say(f"rotate-key --check: current key {current}; ENCRYPTION_KEYS_OLD: {', '.join(old) or 'none'}")
    left, unknown, invalid = 0, set(), 0
    for table in SEALED_TABLES:
        mine = [c for c in counts if c.table == table.name]
        under: dict[tuple[str, str], int] = {}
        for c in mine:
            under[(c.state, c.key_id)] = under.get((c.state, c.key_id), 0) + c.count
        parts = []
        for (state, kid), n in sorted(under.items(), key=lambda item: (item[0][0] != "current", item[0])):
            if state == "current":
                parts.append(f"{n:,} under the current key")
                continue
            left += n
            if state == "old":
                parts.append(f"{n:,} under old key {kid}")
            elif state == "unknown":
                unknown.add(kid)
                parts.append(f"{n:,} under key {kid}, which is NOT configured")
            else:
                invalid += n
                parts.append(f"{n:,} not sealed values (unreadable)")
        say(f"  {table.name}: {'; '.join(parts) or 'no values'}")
    if unknown:
        say(f"rotate-key --check: keys {', '.join(sorted(unknown))} are neither ENCRYPTION_KEY nor in ENCRYPTION_KEYS_OLD:"
            " add them to ENCRYPTION_KEYS_OLD, then run `koinonia rotate-key`")  # fmt: skip
    if invalid:
        say(f"rotate-key --check: {invalid:,} values are not sealed values: no key reads them (restore from a backup)")
    if left:
        say(f"rotate-key --check: {left:,} values remain under other keys: run `koinonia rotate-key`"
            " (--rescan if it says every table is finished); keep the old keys until this finds none")  # fmt: skip
        return 3
    still = f"; the old key(s) {', '.join(old)} can be removed from ENCRYPTION_KEYS_OLD" if old else ""
    say(f"rotate-key --check: every sealed value is under the current key {current}{still}")
    return 0


def cmd_dev(args: argparse.Namespace) -> int:
    from infra.devstack import run_dev_stack

    return run_dev_stack(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="koinonia", description="Koinonia messaging operator command")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("migrate", help="apply pending SQL migrations").set_defaults(func=cmd_migrate)
    sub.add_parser("seed", help="create the demo church and print its API key").set_defaults(func=cmd_seed)
    check = sub.add_parser("check", help="check configuration, PostgreSQL and Redis (`check redis`, `check failover`: deeper)")
    check.set_defaults(func=cmd_check)
    register_checks(check)
    consume = sub.add_parser("consume", help="drain the queue through the carrier (what queue-consume does)")
    consume.add_argument("--forever", action="store_true", help="keep consuming (the local stack's worker)")
    consume.add_argument("--max-messages", type=int, default=100_000)
    consume.add_argument("--max-seconds", type=float, default=50.0, help="budget of one round")
    consume.add_argument("--metrics-port", type=int, help="serve GET /metrics (Prometheus text) on this port (0: any free one)")
    consume.add_argument("--metrics-host", default="127.0.0.1", help="address --metrics-port listens on (default 127.0.0.1)")
    consume.set_defaults(func=cmd_consume)
    register_dlq(sub)
    register_keys(sub)
    register_delete(sub)
    register_analytics(sub)
    register_mail(sub)
    rotate = sub.add_parser(
        "rotate-key",
        help="re-seal stored data under the current ENCRYPTION_KEY (after changing it)",
        epilog="exit status: 0 done (--check: nothing left under another key), 1 error, 2 bad configuration,"
        " 3 --check found values under other keys",
    )
    rotate.add_argument("--batch-size", type=positive_int, default=500, help="rows per transaction (default 500)")
    rotate.add_argument("--check", action="store_true", help="only count values under each key; change nothing")
    rotate.add_argument("--rescan", action="store_true", help="scan every table again, even those finished for this key")
    rotate.set_defaults(func=cmd_rotate_key)
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
