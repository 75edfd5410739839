"""What the sandbox saw: every send attempt by outcome, and every accepted message.

"Accepted" means Telnyx would have queued the message: a 200 answer, and also the
``drop_after_accept`` / ``timeout_after_accept`` faults where the client never hears back. The
latter are the duplicate window the sending system must measure: if it retries them, the ledger
shows the same fingerprint twice.

The fingerprint is (from, to, text, media_urls, webhook_url). The sending system puts its own
message id into ``webhook_url``, so two accepted messages with one fingerprint are a real duplicate,
not two intended sends of the same text.

It also counts webhook deliveries (``webhook_summary()``, the ``webhooks`` section of
``GET /_sandbox/ledger``), inbound messages and the STOP/START/HELP auto-replies the sandbox
would have sent (``autoresponses``).

All methods are thread-safe: the server records from its event-loop thread while tests read from
theirs.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass
from typing import Any

__all__ = ["Fingerprint", "Ledger", "LedgerEntry"]

Fingerprint = tuple[str, str, str | None, tuple[str, ...] | None, str | None]


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    id: str
    to: str
    from_: str
    text: str | None
    media_urls: tuple[str, ...] | None
    webhook_url: str | None
    type: str
    received_at: str
    # "accepted" (answered 200), "drop_after_accept" or "timeout_after_accept".
    outcome: str
    # True when an earlier accepted message had the same fingerprint.
    duplicate: bool

    @property
    def fingerprint(self) -> Fingerprint:
        return (self.from_, self.to, self.text, self.media_urls, self.webhook_url)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "to": self.to,
            "from": self.from_,
            "text": self.text,
            "media_urls": list(self.media_urls) if self.media_urls is not None else None,
            "webhook_url": self.webhook_url,
            "type": self.type,
            "received_at": self.received_at,
            "outcome": self.outcome,
            "duplicate": self.duplicate,
        }


class Ledger:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._clear()

    def _clear(self) -> None:
        self._entries: list[LedgerEntry] = []
        self._bodies: dict[str, bytes] = {}
        self._fingerprints: Counter[Fingerprint] = Counter()
        self._by_to: Counter[str] = Counter()
        self._by_status: Counter[int] = Counter()
        self._by_code: Counter[str] = Counter()
        self._unanswered: Counter[str] = Counter()
        self._by_outcome: Counter[str] = Counter()
        self._attempts = 0
        # Webhooks, inbound, auto-replies.
        self._wh_events: Counter[str] = Counter()
        self._wh_final: Counter[str] = Counter()
        self._wh_attempts = 0
        self._wh_succeeded = 0
        self._wh_failures: Counter[str] = Counter()
        self._wh_duplicates = 0
        self._wh_reordered = 0
        self._wh_undelivered = 0
        self._wh_dropped = 0
        self._inbound = 0
        self._autoresponses: Counter[str] = Counter()

    def clear(self) -> None:
        with self._lock:
            self._clear()

    # Recording (server side) -----------------------------------------------------------------

    def record_answer(self, status: int, code: str | None = None) -> None:
        """A send attempt answered with ``status`` (and error ``code`` unless 200)."""
        with self._lock:
            self._attempts += 1
            self._by_status[status] += 1
            if code is not None:
                self._by_code[code] += 1

    def record_unanswered(self, fault: str) -> None:
        """A send attempt the client got no answer for (drop or timeout, before or after accept)."""
        with self._lock:
            self._attempts += 1
            self._unanswered[fault] += 1

    def record_accepted(
        self,
        *,
        id: str,
        to: str,
        from_: str,
        text: str | None,
        media_urls: tuple[str, ...] | None,
        webhook_url: str | None,
        type: str,
        received_at: str,
        outcome: str,
        body: bytes,
    ) -> LedgerEntry:
        """Record an accepted message; ``body`` is the ``{"data": ...}`` JSON served by GET."""
        fingerprint: Fingerprint = (from_, to, text, media_urls, webhook_url)
        with self._lock:
            seen = self._fingerprints[fingerprint]
            entry = LedgerEntry(id, to, from_, text, media_urls, webhook_url, type, received_at, outcome, seen > 0)
            self._fingerprints[fingerprint] = seen + 1
            self._entries.append(entry)
            self._bodies[id] = body
            self._by_to[to] += 1
            self._by_outcome[outcome] += 1
            return entry

    def record_webhook_event(self, event_type: str, final_status: str | None = None) -> None:
        """An event whose delivery starts (counted once, not per attempt or duplicate)."""
        with self._lock:
            self._wh_events[event_type] += 1
            if final_status is not None:
                self._wh_final[final_status] += 1

    def record_webhook_attempt(self, failure: str | None) -> None:
        """One delivery attempt: ``failure`` is None for a 2xx, else the answer's status code
        (``"500"``) or the error kind (``timeout``, ``connect_error``, ``injected`` ...)."""
        with self._lock:
            self._wh_attempts += 1
            if failure is None:
                self._wh_succeeded += 1
            else:
                self._wh_failures[failure] += 1

    def record_webhook_duplicate(self) -> None:
        with self._lock:
            self._wh_duplicates += 1

    def record_webhook_reordered(self) -> None:
        with self._lock:
            self._wh_reordered += 1

    def record_webhook_undelivered(self) -> None:
        """A delivery that failed on every attempt at every URL."""
        with self._lock:
            self._wh_undelivered += 1

    def record_webhook_dropped(self) -> None:
        """A message or inbound event not scheduled because too many were pending."""
        with self._lock:
            self._wh_dropped += 1

    def record_inbound(self, autoresponse: str | None) -> None:
        with self._lock:
            self._inbound += 1
            if autoresponse is not None:
                self._autoresponses[autoresponse] += 1

    # Reading ---------------------------------------------------------------------------------

    def message_body(self, message_id: str) -> bytes | None:
        with self._lock:
            return self._bodies.get(message_id)

    @property
    def accepted(self) -> int:
        with self._lock:
            return len(self._entries)

    @property
    def unique(self) -> int:
        with self._lock:
            return len(self._fingerprints)

    @property
    def duplicates(self) -> int:
        """Accepted messages whose fingerprint had been accepted before."""
        with self._lock:
            return len(self._entries) - len(self._fingerprints)

    @property
    def attempts(self) -> int:
        with self._lock:
            return self._attempts

    def by_to(self) -> dict[str, int]:
        with self._lock:
            return dict(self._by_to)

    def by_status(self) -> dict[int, int]:
        with self._lock:
            return dict(self._by_status)

    def by_code(self) -> dict[str, int]:
        with self._lock:
            return dict(self._by_code)

    def unanswered(self) -> dict[str, int]:
        with self._lock:
            return dict(self._unanswered)

    @property
    def inbound(self) -> int:
        with self._lock:
            return self._inbound

    def autoresponses(self) -> dict[str, int]:
        """Auto-replies by type (``STOP``, ``START``, ``HELP``)."""
        with self._lock:
            return dict(self._autoresponses)

    def webhook_summary(self) -> dict[str, Any]:
        """JSON-ready webhook counts (the ``webhooks`` section of ``GET /_sandbox/ledger``)."""
        with self._lock:
            return self._webhook_summary()

    def _webhook_summary(self) -> dict[str, Any]:
        return {
            "events": dict(sorted(self._wh_events.items())),
            "final_status": dict(sorted(self._wh_final.items())),
            "attempts": self._wh_attempts,
            "succeeded": self._wh_succeeded,
            "failed": self._wh_attempts - self._wh_succeeded,
            "failures": dict(sorted(self._wh_failures.items())),
            "duplicates": self._wh_duplicates,
            "reordered": self._wh_reordered,
            "undelivered": self._wh_undelivered,
            "dropped": self._wh_dropped,
        }

    def entries(self) -> list[LedgerEntry]:
        with self._lock:
            return list(self._entries)

    def summary(self, *, include_entries: bool = False) -> dict[str, Any]:
        """JSON-ready counts (the body of ``GET /_sandbox/ledger``)."""
        with self._lock:
            out: dict[str, Any] = {
                "attempts": self._attempts,
                "accepted": len(self._entries),
                "unique": len(self._fingerprints),
                "duplicates": len(self._entries) - len(self._fingerprints),
                "by_to": dict(self._by_to),
                "by_status": {str(status): n for status, n in sorted(self._by_status.items())},
                "by_code": dict(sorted(self._by_code.items())),
                "unanswered": dict(sorted(self._unanswered.items())),
                "by_outcome": dict(sorted(self._by_outcome.items())),
                "webhooks": self._webhook_summary(),
                "inbound": self._inbound,
                "autoresponses": dict(sorted(self._autoresponses.items())),
            }
            if include_entries:
                out["entries"] = [e.to_dict() for e in self._entries]
            return out
