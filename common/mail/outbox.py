"""What a local moto server has "sent": the developer's view of their own mail (``koinonia mail sent``).

moto keeps every mail accepted by ``SendEmail`` in memory and shows its models at
``GET {endpoint}/moto-api/data.json`` (``ses`` -> ``Message``: ``id``, ``source``, ``subject``,
``body``, ``destinations``). Nothing here talks to AWS: the endpoint must be a moto server.

Recipients are masked (``a***@example.org``) unless ``show_recipients=True`` (the command's
``--show``): these are the developer's own local mails, but a terminal or a pasted log is the
usual way an address leaks, so the default shows only enough to recognise one. The From address
(``MAIL_FROM``, our own sender) is shown as is. moto records no send time: the list is in the
order moto accepted the mails, oldest first. Bodies are left out (the moto dashboard shows them).
"""

from __future__ import annotations

from typing import Any, TypedDict

import httpx

from common.logs import mask_address

__all__ = ["OutboxUnavailable", "SentMail", "sent_mail"]

_DESTINATION_KEYS = (("to", "ToAddresses"), ("cc", "CcAddresses"), ("bcc", "BccAddresses"))


class SentMail(TypedDict):
    message_id: str
    source: str
    to: list[str]
    cc: list[str]
    bcc: list[str]
    subject: str


class OutboxUnavailable(Exception):
    """The endpoint did not answer like a moto server (down, or not moto)."""


def sent_mail(endpoint_url: str, *, show_recipients: bool = False, timeout_s: float = 5.0) -> list[SentMail]:
    """Mails a local moto server accepted through SES ``SendEmail``, oldest first."""
    url = endpoint_url.rstrip("/") + "/moto-api/data.json"
    try:
        answer = httpx.get(url, timeout=timeout_s)
        answer.raise_for_status()
        data = answer.json()
    except (httpx.HTTPError, ValueError) as exc:
        raise OutboxUnavailable(f"{endpoint_url} did not answer like a moto server ({type(exc).__name__})") from None
    models = data.get("ses") if isinstance(data, dict) else None
    messages = models.get("Message") if isinstance(models, dict) else None
    if not isinstance(messages, list):
        return []
    return [_row(m, show_recipients) for m in messages if isinstance(m, dict)]


def _row(message: dict[str, Any], show: bool) -> SentMail:
    destinations = message.get("destinations")
    if not isinstance(destinations, dict):
        destinations = {}

    def addresses(key: str) -> list[str]:
        found = destinations.get(key)
        values = [a for a in found if isinstance(a, str)] if isinstance(found, list) else []
        return values if show else [mask_address(a) for a in values]

    rows = {name: addresses(key) for name, key in _DESTINATION_KEYS}
    return SentMail(
        message_id=str(message.get("id", "")),
        source=str(message.get("source", "")),
        to=rows["to"],
        cc=rows["cc"],
        bcc=rows["bcc"],
        subject=str(message.get("subject", "")),
    )
