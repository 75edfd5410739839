"""``koinonia mail``: what the local SES (a moto server) has sent, for developers.

    koinonia mail sent [--show] [--endpoint URL]

The endpoint is ``--endpoint``, else ``SES_ENDPOINT_URL`` (the environment, then ``.env``), else where
``koinonia dev`` starts moto with its default ports (``http://127.0.0.1:8087``; the banner prints the
command with the right one). Only the endpoint is read, not the whole configuration: the developer's
shell beside ``koinonia dev`` has no ``DATABASE_URL``, and none is needed to ask moto. Recipients are
masked unless ``--show`` (common/mail/outbox.py says why).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from common import constants
from common.cli_support import say

DEV_ENDPOINT = "http://127.0.0.1:8087"  # `koinonia dev` with its default base port 8080: moto on base+7


def endpoint_url(explicit: str | None) -> str:
    """``--endpoint``, else ``SES_ENDPOINT_URL`` from the environment or ``.env``, else the dev stack's default."""
    if explicit:
        return explicit
    configured = os.environ.get(constants.SES_ENDPOINT_URL_ENV)
    if not configured and Path(".env").is_file():
        from dotenv import dotenv_values

        configured = dotenv_values(".env").get(constants.SES_ENDPOINT_URL_ENV)
    return configured or DEV_ENDPOINT


def cmd_sent(args: argparse.Namespace) -> int:
    from common.mail.outbox import OutboxUnavailable, sent_mail

    endpoint = endpoint_url(args.endpoint)
    try:
        mails = sent_mail(endpoint, show_recipients=args.show)
    except OutboxUnavailable as exc:
        say(f"mail sent: {exc}; is `koinonia dev` running? (--endpoint or SES_ENDPOINT_URL names the local SES)", sys.stderr)
        return 1
    say(f"mail sent: {len(mails)} mail(s) accepted by the local SES at {endpoint}, oldest first"
        + ("" if args.show else " (recipients masked; --show shows them)"))  # fmt: skip
    for n, mail in enumerate(mails, 1):
        copies = f"  cc {', '.join(mail['cc'])}" if mail["cc"] else ""
        copies += f"  bcc {', '.join(mail['bcc'])}" if mail["bcc"] else ""
        say(f"{n:>4}. {mail['message_id']}  from {mail['source']}  to {', '.join(mail['to'])}{copies}  {mail['subject']!r}")
    return 0


def register(sub: Any) -> None:
    mail = sub.add_parser("mail", help="mail: list what the local SES (moto, `koinonia dev`) has sent")
    commands = mail.add_subparsers(dest="mail_command", required=True)
    sent = commands.add_parser("sent", help="the mails the local moto SES accepted, oldest first")
    sent.add_argument("--show", action="store_true", help="show the recipients' addresses unmasked")
    sent.add_argument("--endpoint", help=f"the moto server (default: SES_ENDPOINT_URL, else {DEV_ENDPOINT})")
    sent.set_defaults(func=cmd_sent)
