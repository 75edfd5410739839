"""Sandbox configuration: one immutable record, replaced wholesale on every change.

The running server reads ``SandboxApp.config`` once per request, so swapping the reference is
atomic from the point of view of a request: it sees either the old or the new configuration,
never half of each.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from .faults import FINAL_STATUSES, parse_rule
from .signing import decode_seed

__all__ = ["FAULT_RATE_FIELDS", "WEBHOOK_RATE_FIELDS", "SandboxConfig"]

# The probabilistic faults, in the order their probability bands are laid out on [0, 1).
FAULT_RATE_FIELDS: tuple[str, ...] = (
    "rate_drop_before_accept",
    "rate_timeout",
    "rate_429",
    "rate_5xx",
    "rate_drop_after_accept",
    "rate_timeout_after_accept",
)

# Webhook delivery faults: independent probabilities (not bands of one draw).
WEBHOOK_RATE_FIELDS: tuple[str, ...] = ("webhook_duplicate_rate", "webhook_reorder_rate", "webhook_fail_rate")

DEFAULT_MESSAGING_PROFILE_ID = "40017f4d-5a1e-4b54-a7a2-5a8d2f0e0b01"
DEFAULT_ORGANIZATION_ID = "b6a4c0e2-7c1d-4f0a-9d5e-3a2b1c0d9e8f"


@dataclass(frozen=True, slots=True)
class SandboxConfig:
    """Everything that shapes how the sandbox answers ``POST /v2/messages``.

    Fault rates are probabilities per *valid* send request (one that passed auth and validation).
    They are disjoint bands of a single draw, so their sum must not exceed 1 and each rate is
    exactly the share of requests that see that fault.
    """

    api_key: str = "KEY_sandbox"
    # Accepted ``from`` values; empty means any sender is accepted.
    allowed_from: tuple[str, ...] = ()
    latency_ms: float = 0.0
    # Extra uniform random latency in [0, jitter_ms] added to latency_ms.
    jitter_ms: float = 0.0
    rate_5xx: float = 0.0
    rate_429: float = 0.0
    rate_timeout: float = 0.0
    rate_drop_before_accept: float = 0.0
    rate_drop_after_accept: float = 0.0
    rate_timeout_after_accept: float = 0.0
    # How long a "timeout" fault holds the request unanswered before closing the connection.
    timeout_hold_s: float = 30.0
    seed: int = 0
    # Deterministic faults keyed by the ``to`` number, e.g. {"+15550001111": "fail_first:2"}.
    rules: Mapping[str, str] = field(default_factory=dict)
    # HTTP status used for the "5xx" rule and rate_5xx (fail_first always answers 503).
    status_5xx: int = 500
    # Values sent in the 429 headers x-ratelimit-limit and x-ratelimit-reset / retry-after.
    ratelimit_limit: int = 100
    ratelimit_reset_s: int = 1
    # Price of one part: cost.amount is parts x this, formatted with 4 decimals.
    cost_per_part_usd: str = "0.0040"
    messaging_profile_id: str = DEFAULT_MESSAGING_PROFILE_ID
    organization_id: str = DEFAULT_ORGANIZATION_ID
    max_body_bytes: int = 1_048_576

    # Webhooks (see webhooks.py) ------------------------------------------------------------------
    # base64 of a 32-byte Ed25519 seed; None: a key generated per SandboxApp (kept across
    # configure/reset). The public key is SandboxApp.webhook_public_key / GET /_sandbox/webhook-key.
    webhook_signing_key: str | None = None
    # Master switch for every webhook (message.sent / message.finalized / message.received).
    webhooks: bool = True
    # The messaging profile's webhook URL: used when a send has no webhook_url (and did not set
    # use_profile_webhooks=false), and tried after the message's own URLs when it has them.
    default_webhook_url: str | None = None
    # Where message.received goes (POST /_sandbox/inbound answers 409 while this is None).
    inbound_webhook_url: str | None = None
    # Delays from accept to message.sent and to message.finalized.
    webhook_delay_ms: float = 5.0
    finalize_delay_ms: float = 20.0
    # Final status of every message without a dlr:STATUS rule.
    final_status: str = "delivered"
    # Probability that an event is delivered twice (same data.id), that message.finalized is
    # delivered before message.sent, and that a delivery attempt is dropped as a network failure.
    webhook_duplicate_rate: float = 0.0
    webhook_reorder_rate: float = 0.0
    webhook_fail_rate: float = 0.0
    # Telnyx's contract: a 2xx within 2 s, else retried; 3 attempts per URL, then the failover URL.
    webhook_timeout_s: float = 2.0
    webhook_attempts: int = 3
    webhook_retry_base_ms: float = 100.0
    # Messages (and inbound events) waiting for delivery beyond this are dropped and counted in the
    # ledger, so a flood of sends to a dead URL cannot grow the sandbox without bound.
    webhook_max_pending: int = 10_000

    # Opt-out (see blocklist.py) -----------------------------------------------------------------------
    # Church number -> messaging profile name (block rules are per profile); unlisted: own profile.
    number_profiles: Mapping[str, str] = field(default_factory=dict)
    # Telnyx's default opt-out handling: inbound STOP / START create / lift the block rule, and STOP /
    # START / HELP get autoresponse_type and an auto-reply counted in the ledger. False: a profile whose
    # keyword handling is left to us (no block rules, no auto-replies).
    autorespond: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.allowed_from, str):
            raise ValueError("allowed_from must be a list of strings, not a string")
        # Normalise containers so a config built from JSON lists/dicts compares equal and is
        # not aliased to a caller's mutable object.
        object.__setattr__(self, "allowed_from", tuple(self.allowed_from))
        object.__setattr__(self, "rules", dict(self.rules))
        if not isinstance(self.number_profiles, Mapping):
            raise ValueError("number_profiles must map a church number to a profile name")
        object.__setattr__(self, "number_profiles", dict(self.number_profiles))
        self._validate()
        self._validate_webhooks()

    def _validate(self) -> None:
        if not isinstance(self.api_key, str) or not self.api_key:
            raise ValueError("api_key must be a non-empty string")
        for number in self.allowed_from:
            if not isinstance(number, str):
                raise ValueError("allowed_from must be a list of strings")
        for name in ("latency_ms", "jitter_ms", "timeout_hold_s"):
            value = getattr(self, name)
            if not _is_number(value) or value < 0 or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number >= 0")
        total = 0.0
        for name in FAULT_RATE_FIELDS:
            value = getattr(self, name)
            if not _is_number(value) or not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be a number between 0 and 1")
            total += value
        if total > 1.0 + 1e-9:
            raise ValueError(f"fault rates are disjoint probabilities and must sum to <= 1 (got {total:g})")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise ValueError("seed must be an integer")
        for to, rule in self.rules.items():
            if not isinstance(to, str) or not isinstance(rule, str):
                raise ValueError("rules must map a 'to' number (string) to a rule (string)")
            parse_rule(rule)
        if not isinstance(self.status_5xx, int) or not 500 <= self.status_5xx <= 599:
            raise ValueError("status_5xx must be an integer between 500 and 599")
        for name in ("ratelimit_limit", "ratelimit_reset_s", "max_body_bytes"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0")
        try:
            cost = float(self.cost_per_part_usd)
        except (TypeError, ValueError):
            raise ValueError("cost_per_part_usd must be a decimal string such as '0.0040'") from None
        if cost < 0:
            raise ValueError("cost_per_part_usd must be >= 0")

    def _validate_webhooks(self) -> None:
        if self.webhook_signing_key is not None:
            if not isinstance(self.webhook_signing_key, str):
                raise ValueError("webhook_signing_key must be a base64 string or null")
            decode_seed(self.webhook_signing_key)
        for name in ("webhooks", "autorespond"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false")
        for name in ("default_webhook_url", "inbound_webhook_url"):
            value = getattr(self, name)
            if value is not None and not _is_http_url(value):
                raise ValueError(f"{name} must be an http:// or https:// URL or null")
        for name in ("webhook_delay_ms", "finalize_delay_ms", "webhook_retry_base_ms"):
            value = getattr(self, name)
            if not _is_number(value) or value < 0 or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number >= 0")
        if not _is_number(self.webhook_timeout_s) or not 0 < self.webhook_timeout_s < math.inf:
            raise ValueError("webhook_timeout_s must be a finite number > 0")
        if self.final_status not in FINAL_STATUSES:
            raise ValueError(f"final_status must be one of {', '.join(FINAL_STATUSES)}")
        for name in WEBHOOK_RATE_FIELDS:
            value = getattr(self, name)
            if not _is_number(value) or not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be a number between 0 and 1")
        for name, low in (("webhook_attempts", 1), ("webhook_max_pending", 0)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}")
        for number, profile in self.number_profiles.items():
            if not isinstance(number, str) or not isinstance(profile, str) or not profile:
                raise ValueError("number_profiles must map a church number (string) to a profile name (string)")

    @property
    def webhook_faults(self) -> bool:
        """True when any webhook delivery fault has a non-zero rate."""
        return bool(self.webhook_duplicate_rate or self.webhook_reorder_rate or self.webhook_fail_rate)

    @property
    def total_fault_rate(self) -> float:
        return float(sum(getattr(self, name) for name in FAULT_RATE_FIELDS))

    def with_changes(self, changes: Mapping[str, Any]) -> SandboxConfig:
        """A new config with ``changes`` applied; unknown keys raise ``ValueError``."""
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ValueError(f"unknown config field(s): {', '.join(unknown)}")
        try:
            return dataclasses.replace(self, **dict(changes))
        except TypeError as exc:  # e.g. a list where a number was expected
            raise ValueError(str(exc)) from None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SandboxConfig:
        return cls().with_changes(data)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready view (tuples become lists)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, tuple):
                value = list(value)
            elif isinstance(value, Mapping):
                value = dict(value)
            out[f.name] = value
        return out


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_http_url(value: object) -> bool:
    if not isinstance(value, str):
        return False
    try:
        parts = urlsplit(value)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.netloc)
