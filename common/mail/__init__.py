"""Mail: one message through Amazon SES, answered with the SMS carrier's ``CarrierResult``.

Public surface:

- ``SesMailer``: ``SesMailer.from_settings(settings)``; ``await mailer.send(OutgoingMail(...)) ->
  CarrierResult`` (never raises for SES or network problems); ``await mailer.aclose()``.
- ``OutgoingMail``: message id (ours, sent as the SES tag ``koinonia_message_id``), to, subject,
  text, optional html.
- ``classify_ses_error`` / ``classify_ses_exception`` and ``SES_CODE_TABLE`` (``ses.py``): which SES
  answers are retryable, rate-limited, permanent, or mean our setup is wrong.
- ``sent_mail`` (``outbox.py``): what a local moto server has sent, for developers (``koinonia mail
  sent``, ``cli.py``).

The names load on first use: ``ses.py`` imports boto3 (a few hundred milliseconds), which ``koinonia``
commands and functions that never send mail should not pay (``import common.mail.outbox`` alone does not).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .outbox import OutboxUnavailable, SentMail, sent_mail
    from .ses import (
        DAILY_QUOTA_RETRY_AFTER_S,
        MESSAGE_ID_TAG,
        SES_CODE_TABLE,
        OutgoingMail,
        SesMailer,
        classify_ses_error,
        classify_ses_exception,
    )

__all__ = [
    "DAILY_QUOTA_RETRY_AFTER_S",
    "MESSAGE_ID_TAG",
    "SES_CODE_TABLE",
    "OutboxUnavailable",
    "OutgoingMail",
    "SentMail",
    "SesMailer",
    "classify_ses_error",
    "classify_ses_exception",
    "sent_mail",
]

_MODULE_OF = {
    **dict.fromkeys(("OutboxUnavailable", "SentMail", "sent_mail"), ".outbox"),
    **dict.fromkeys(
        ("DAILY_QUOTA_RETRY_AFTER_S", "MESSAGE_ID_TAG", "SES_CODE_TABLE", "OutgoingMail", "SesMailer", "classify_ses_error",
         "classify_ses_exception"),
        ".ses",
    ),
}  # fmt: skip


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # once: later lookups do not come here
    return value
