"""The ``delivery outcome`` log line: one per attempt's outcome, written the same way by every path that sends.

queue-consume (common/consume.py) and the inline path (common/inline.py: ``send`` with Redis down or
``ENABLE_QUEUES=false``, the scheduler's inline mode) both write outcomes; one function builds the line so an
operator's query (README "## Logs and correlation ids") finds a message whichever path sent it.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

from common.messages.store import Outcome

SendMode = Literal["queued", "inline"]  # which path sent it: queue-consume, or common/inline.py


def log_outcome(
    logger: logging.Logger, outcome: Outcome, *, written: bool, attempt: int, latency_ms: int,
    correlation_id: str | None, mode: SendMode,
) -> None:  # fmt: skip
    """One INFO line, ids only (no number, no text): the message's ``correlation_id`` joins it to the send that
    accepted it; ``request_id`` (added by the formatter) is the request or invocation that sent it. A failed message
    is a dead letter (common/messages/store.py ``record_outcomes``); ``lost_claim`` (not ``written``): another
    claimant took the lease over, and its line is the one that counts."""
    if not logger.isEnabledFor(logging.INFO):  # LOG_LEVEL=WARNING: no per-message lines, nor the dict for them
        return
    fields: dict[str, Any] = {
        "message_id": outcome.message_id, "correlation_id": correlation_id,
        "status": outcome.status if written else "lost_claim", "outcome": outcome.outcome,
        "attempt": attempt, "latency_ms": latency_ms, "mode": mode,
    }  # fmt: skip
    if outcome.provider_message_id:
        fields["provider_message_id"] = outcome.provider_message_id
    if outcome.error_code:
        fields["error_code"] = outcome.error_code
    if written and outcome.status == "failed":
        fields["dead_letter"] = True
    logger.info("delivery outcome", extra={"fields": fields})
