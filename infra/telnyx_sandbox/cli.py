"""``python -m infra.telnyx_sandbox``: serve the sandbox until SIGINT or SIGTERM.

Prints exactly one line on stdout when ready, ``telnyx-sandbox listening on http://HOST:PORT``
(with the real port when ``--port 0``), then nothing else. With ``--print-webhook-key`` a second
line follows, ``telnyx-sandbox webhook public key: <base64>`` (behind a flag so the one-line
contract that scripts and benches parse stays as it was; ``GET /_sandbox/webhook-key`` gives the
same key).

Settings come from ``--config FILE`` (a JSON object of SandboxConfig fields), then the environment
(``TELNYX_SANDBOX_SIGNING_KEY``: base64 Ed25519 seed), then the flags given, each overriding the one
before. Prefer the file or the variable for the signing key: a flag shows in ``ps``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

from .app import SandboxApp
from .config import SandboxConfig
from .server import new_event_loop, start_server

__all__ = ["SIGNING_KEY_ENV", "build_parser", "config_from_args", "main"]

SIGNING_KEY_ENV = "TELNYX_SANDBOX_SIGNING_KEY"

_RATE_FLAGS = (
    "rate_5xx",
    "rate_429",
    "rate_timeout",
    "rate_drop_before_accept",
    "rate_drop_after_accept",
    "rate_timeout_after_accept",
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m infra.telnyx_sandbox", description="Telnyx v2 messaging sandbox")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8099, help="0 picks a free port (default 8099)")
    p.add_argument("--config", metavar="FILE", help="JSON object of SandboxConfig fields")
    p.add_argument("--api-key")
    p.add_argument("--allowed-from", action="append", metavar="NUMBER", help="repeatable; default any")
    p.add_argument("--latency-ms", type=float)
    p.add_argument("--jitter-ms", type=float)
    for name in _RATE_FLAGS:
        p.add_argument("--" + name.replace("_", "-"), dest=name, type=float, metavar="P")
    p.add_argument("--timeout-hold-s", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--status-5xx", type=int)
    p.add_argument(
        "--rule",
        action="append",
        metavar="TO=RULE",
        help="repeatable, e.g. +15550001111=fail_first:2 "
        "(blocked, invalid, 5xx, 429, timeout, timeout_after_accept, drop_before_accept, "
        "drop_after_accept, fail_first:N, dlr:STATUS[:CODE])",
    )
    w = p.add_argument_group("webhooks")
    w.add_argument(
        "--webhook-signing-key",
        metavar="B64",
        help=f"base64 Ed25519 seed (32 bytes) to sign webhooks with; env {SIGNING_KEY_ENV}; default: a new key",
    )
    w.add_argument("--default-webhook-url", metavar="URL", help="messaging profile webhook URL")
    w.add_argument("--inbound-webhook-url", metavar="URL", help="where message.received goes")
    w.add_argument("--webhook-delay-ms", type=float, help="accept -> message.sent (default 5)")
    w.add_argument("--finalize-delay-ms", type=float, help="accept -> message.finalized (default 20)")
    w.add_argument("--final-status", help="delivered (default), delivery_failed, delivery_unconfirmed, sending_failed, expired")
    w.add_argument("--no-webhooks", dest="webhooks", action="store_false", default=None, help="send no webhooks at all")
    w.add_argument(
        "--number-profile",
        action="append",
        metavar="NUMBER=PROFILE",
        help="repeatable: church numbers sharing a messaging profile share STOP blocks",
    )
    w.add_argument("--print-webhook-key", action="store_true", help="print the public key on a second stdout line")
    return p


def config_from_args(args: argparse.Namespace) -> SandboxConfig:
    fields: dict[str, Any] = {}
    if args.config:
        with open(args.config, encoding="utf-8") as fh:
            loaded = json.load(fh)
        if not isinstance(loaded, dict):
            raise ValueError("--config must hold a JSON object")
        fields.update(loaded)
    env_key = os.environ.get(SIGNING_KEY_ENV)
    if env_key:
        fields["webhook_signing_key"] = env_key
    for name in (
        "api_key",
        "latency_ms",
        "jitter_ms",
        "timeout_hold_s",
        "seed",
        "status_5xx",
        *_RATE_FLAGS,
        "webhook_signing_key",
        "default_webhook_url",
        "inbound_webhook_url",
        "webhook_delay_ms",
        "finalize_delay_ms",
        "final_status",
        "webhooks",
    ):
        value = getattr(args, name)
        if value is not None:
            fields[name] = value
    if args.number_profile:
        profiles = dict(fields.get("number_profiles") or {})
        for item in args.number_profile:
            number, sep, profile = item.partition("=")
            if not sep:
                raise ValueError("--number-profile takes NUMBER=PROFILE")
            profiles[number] = profile
        fields["number_profiles"] = profiles
    if args.allowed_from:
        fields["allowed_from"] = tuple(args.allowed_from)
    if args.rule:
        rules = dict(fields.get("rules") or {})
        for item in args.rule:
            to, sep, rule = item.partition("=")
            if not sep:
                raise ValueError("--rule takes TO=RULE")
            rules[to] = rule
        fields["rules"] = rules
    return SandboxConfig.from_dict(fields)


async def _serve(config: SandboxConfig, host: str, port: int, print_key: bool) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    app = SandboxApp(config)
    server = await start_server(app, host, port)
    print(f"telnyx-sandbox listening on {server.url}", flush=True)
    if print_key:
        print(f"telnyx-sandbox webhook public key: {app.webhook_public_key}", flush=True)
    try:
        await stop.wait()
    finally:
        await server.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
    except (OSError, ValueError) as exc:
        parser.error(str(exc))
    try:
        with asyncio.Runner(loop_factory=new_event_loop) as runner:
            runner.run(_serve(config, args.host, args.port, args.print_webhook_key))
    except KeyboardInterrupt:  # a SIGINT that arrived before the handlers were installed
        return 130
    except OSError as exc:  # e.g. port in use
        print(f"telnyx-sandbox: {exc}", file=sys.stderr)
        return 1
    return 0
