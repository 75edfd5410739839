"""The carrier: an async Telnyx v2 messaging client and the one place carrier errors are classified.

Public surface:

- ``TelnyxClient``: ``await client.send(OutboundMessage(...)) -> CarrierResult``; never raises for
  carrier or network problems. Bounded concurrency (``max_connections`` keep-alive connections).
- ``OutboundMessage``, ``CarrierResult``, ``Outcome`` (``sent | retry | rate_limited | failed |
  opted_out``), ``ClientStats``.
- ``classify`` and friends (``errors.py``): the code table deciding retryable vs permanent vs
  opted-out vs rate-limited, and which answers mean our configuration is wrong.
"""

from __future__ import annotations

from .errors import (
    CODE_TABLE,
    Verdict,
    classify,
    classify_exception,
    classify_response,
    retry_after_from_headers,
    safe_detail,
)
from .telnyx import TelnyxClient
from .types import OUTCOMES, CarrierResult, ClientStats, OutboundMessage, Outcome

__all__ = [
    "CODE_TABLE",
    "OUTCOMES",
    "CarrierResult",
    "ClientStats",
    "OutboundMessage",
    "Outcome",
    "TelnyxClient",
    "Verdict",
    "classify",
    "classify_exception",
    "classify_response",
    "retry_after_from_headers",
    "safe_detail",
]
