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

from .faults import parse_rule

__all__ = ["FAULT_RATE_FIELDS", "SandboxConfig"]

# The probabilistic faults, in the order their probability bands are laid out on [0, 1).
FAULT_RATE_FIELDS: tuple[str, ...] = (
    "rate_drop_before_accept",
    "rate_timeout",
    "rate_429",
    "rate_5xx",
    "rate_drop_after_accept",
    "rate_timeout_after_accept",
)

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

    def __post_init__(self) -> None:
        if isinstance(self.allowed_from, str):
            raise ValueError("allowed_from must be a list of strings, not a string")
        # Normalise containers so a config built from JSON lists/dicts compares equal and is
        # not aliased to a caller's mutable object.
        object.__setattr__(self, "allowed_from", tuple(self.allowed_from))
        object.__setattr__(self, "rules", dict(self.rules))
        self._validate()

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
