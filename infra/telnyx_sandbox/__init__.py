"""A Telnyx v2 Messaging-compatible carrier sandbox we own (loopback only; never calls Telnyx).

Public surface:

- ``SandboxConfig``: api key, allowed senders, latency, fault rates, per-number rules, seed.
- ``Sandbox``: in-process server on a background thread (``with Sandbox(cfg) as sb: sb.url``).
- ``Ledger`` / ``LedgerEntry``: what was accepted, duplicates by fingerprint, attempts by status.
- ``SandboxApp`` / ``start_server``: the handler and server for callers that own an event loop.
- Webhooks: signed ``message.sent`` / ``message.finalized`` / ``message.received`` (``webhooks.py``),
  a per-profile STOP block list (``blocklist.py``) and simulated inbound texts (``inbound.py``).
- ``segment``: the GSM-7 / UCS-2 part counting the sandbox bills with.
- CLI: ``python -m infra.telnyx_sandbox --port 8099`` (see ``cli.py``).

HTTP control API (no auth): ``GET /_sandbox/health``, ``GET /_sandbox/ledger[?entries=1]``,
``GET|POST /_sandbox/config``, ``POST /_sandbox/reset``, ``GET /_sandbox/webhook-key``,
``GET /_sandbox/webhooks/pending``, ``POST /_sandbox/inbound``, ``GET|POST /_sandbox/blocks``,
``POST /_sandbox/blocks/remove``.
"""

from __future__ import annotations

from .app import SandboxApp
from .blocklist import BlockList, Keyword, classify_keyword
from .config import SandboxConfig
from .encoding import Segmentation, segment
from .errors import ApiError
from .faults import Fault, Rule, parse_rule
from .ledger import Ledger, LedgerEntry
from .server import Sandbox, SandboxServer, start_server
from .signing import Signer

__all__ = [
    "ApiError",
    "BlockList",
    "Fault",
    "Keyword",
    "Ledger",
    "LedgerEntry",
    "Rule",
    "Sandbox",
    "SandboxApp",
    "SandboxConfig",
    "SandboxServer",
    "Segmentation",
    "Signer",
    "classify_keyword",
    "parse_rule",
    "segment",
    "start_server",
]
