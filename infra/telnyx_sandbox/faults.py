"""Which fault, if any, a valid send request meets.

Two sources, checked in this order:

1. Deterministic per-number rules keyed by the request's ``to`` (``SandboxConfig.rules``).
   ``dlr:STATUS[:CODE]`` is not a send fault: it only sets the final status (and error code) of
   that number's delivery webhooks, so such a send goes on to the rates like an unruled one.
2. Probabilistic rates: one draw from a seeded RNG, laid out as disjoint bands in the order of
   ``FAULT_RATE_FIELDS``. With the same seed and the same sequence of valid requests the
   sandbox makes the same choices, so a failing run can be replayed.
"""

from __future__ import annotations

import enum
import random
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .errors import DELIVERY_ERRORS

if TYPE_CHECKING:
    from .config import SandboxConfig

__all__ = ["FINAL_STATUSES", "STATUSES_WITH_ERRORS", "Fault", "FaultEngine", "Rule", "parse_rule"]

# Terminal ``to[].status`` values a ``message.finalized`` webhook can carry (telnyx.md section 3).
FINAL_STATUSES: tuple[str, ...] = ("delivered", "delivery_failed", "delivery_unconfirmed", "sending_failed", "expired")
# The final statuses that come with ``errors[]`` (a 400xx delivery error).
STATUSES_WITH_ERRORS: frozenset[str] = frozenset({"delivery_failed", "sending_failed", "expired"})


class Fault(enum.StrEnum):
    BLOCKED = "blocked"  # 409 / 40300
    INVALID = "invalid"  # 400 / 40310
    ERROR_5XX = "5xx"  # status_5xx / 10007
    FAIL_FIRST = "fail_first"  # 503 / 10007 for the first N requests to a number
    RATE_LIMITED = "429"  # 429 / 10011
    TIMEOUT = "timeout"  # hold unanswered, then close; not accepted
    TIMEOUT_AFTER_ACCEPT = "timeout_after_accept"  # accepted, then hold unanswered and close
    DROP_BEFORE_ACCEPT = "drop_before_accept"  # close without a response; not accepted
    DROP_AFTER_ACCEPT = "drop_after_accept"  # accepted, then close without a response
    DLR = "dlr"  # not a send fault: dlr:STATUS[:CODE] sets the final status of the webhooks

    @property
    def accepts(self) -> bool:
        """True when the message is recorded as accepted although the client gets no answer."""
        return self in (Fault.DROP_AFTER_ACCEPT, Fault.TIMEOUT_AFTER_ACCEPT)


_SIMPLE_RULES = {f.value: f for f in Fault if f not in (Fault.FAIL_FIRST, Fault.DLR)}


@dataclass(frozen=True, slots=True)
class Rule:
    fault: Fault
    count: int = 0  # only for fail_first:N
    status: str | None = None  # only for dlr:STATUS[:CODE]
    code: str | None = None  # only for dlr:STATUS:CODE


def parse_rule(text: str) -> Rule:
    """Parse a rule string: one of the ``Fault`` values, ``fail_first:N`` (N >= 0) or
    ``dlr:STATUS[:CODE]`` (STATUS one of ``FINAL_STATUSES``; CODE a 400xx delivery error, only
    for a status that carries errors)."""
    simple = _SIMPLE_RULES.get(text)
    if simple is not None:
        return Rule(simple)
    name, sep, rest = text.partition(":")
    if name == Fault.FAIL_FIRST.value and sep and rest.isdigit():
        return Rule(Fault.FAIL_FIRST, int(rest))
    if name == Fault.DLR.value and sep:
        return _parse_dlr(text, rest)
    allowed = ", ".join([*_SIMPLE_RULES, "fail_first:N", "dlr:STATUS[:CODE]"])
    raise ValueError(f"unknown rule {text!r}; expected one of {allowed}")


def _parse_dlr(text: str, rest: str) -> Rule:
    status, sep, code = rest.partition(":")
    if status not in FINAL_STATUSES:
        raise ValueError(f"rule {text!r}: status must be one of {', '.join(FINAL_STATUSES)}")
    if not sep:
        return Rule(Fault.DLR, status=status)
    if status not in STATUSES_WITH_ERRORS:
        raise ValueError(f"rule {text!r}: only {', '.join(sorted(STATUSES_WITH_ERRORS))} carry an error code")
    if code not in DELIVERY_ERRORS:
        raise ValueError(f"rule {text!r}: code must be one of {', '.join(DELIVERY_ERRORS)}")
    return Rule(Fault.DLR, status=status, code=code)


# Probabilistic faults in band order; must match config.FAULT_RATE_FIELDS.
_RATE_FAULTS: tuple[tuple[str, Fault], ...] = (
    ("rate_drop_before_accept", Fault.DROP_BEFORE_ACCEPT),
    ("rate_timeout", Fault.TIMEOUT),
    ("rate_429", Fault.RATE_LIMITED),
    ("rate_5xx", Fault.ERROR_5XX),
    ("rate_drop_after_accept", Fault.DROP_AFTER_ACCEPT),
    ("rate_timeout_after_accept", Fault.TIMEOUT_AFTER_ACCEPT),
)


class FaultEngine:
    """Seeded RNG, parsed rules and the per-number counters behind ``fail_first:N``."""

    def __init__(self, config: SandboxConfig) -> None:
        self._lock = threading.Lock()
        self._rules: dict[str, Rule] = {}
        self._rules_source: Mapping[str, str] | None = None
        self._fail_counts: dict[str, int] = {}
        self._rng = random.Random(config.seed)
        self._jitter_rng = random.Random(config.seed ^ 0x5EED)
        self._update_rules(config.rules)

    def reseed(self, seed: int) -> None:
        with self._lock:
            self._rng = random.Random(seed)
            self._jitter_rng = random.Random(seed ^ 0x5EED)

    def reset_rules(self, rules: Mapping[str, str]) -> None:
        """Install ``rules`` and forget how many requests every number has had."""
        with self._lock:
            self._fail_counts = {}
            self._update_rules(rules)

    def _update_rules(self, rules: Mapping[str, str]) -> None:
        # A number keeps its fail_first progress only while its rule text is unchanged.
        old = self._rules_source or {}
        self._fail_counts = {to: n for to, n in self._fail_counts.items() if rules.get(to) == old.get(to)}
        self._rules = {to: parse_rule(text) for to, text in rules.items()}
        self._rules_source = rules

    def _sync_rules(self, config: SandboxConfig) -> None:
        """Follow ``config.rules`` (called with the lock held)."""
        if config.rules is not self._rules_source:
            # Every config change builds a new rules dict; only a change of content matters.
            if config.rules != self._rules_source:
                self._update_rules(config.rules)
            self._rules_source = config.rules

    def decide(self, config: SandboxConfig, to: str) -> tuple[Fault | None, int]:
        """The fault for one valid send to ``to``; second item is the 1-based request count
        for that number under a ``fail_first`` rule (0 otherwise)."""
        with self._lock:
            self._sync_rules(config)
            rule = self._rules.get(to)
            if rule is not None and rule.fault is not Fault.DLR:
                if rule.fault is not Fault.FAIL_FIRST:
                    return rule.fault, 0
                seen = self._fail_counts.get(to, 0) + 1
                self._fail_counts[to] = seen
                if seen <= rule.count:
                    return Fault.FAIL_FIRST, seen
            if config.total_fault_rate <= 0.0:
                return None, 0
            draw = self._rng.random()
        edge = 0.0
        for name, fault in _RATE_FAULTS:
            edge += getattr(config, name)
            if draw < edge:
                return fault, 0
        return None, 0

    def final_status(self, config: SandboxConfig, to: str) -> tuple[str, str | None]:
        """(final status, delivery error code or None) for a message to ``to``: its ``dlr:`` rule,
        else ``config.final_status``. The code is None when the rule names none."""
        with self._lock:
            self._sync_rules(config)
            rule = self._rules.get(to)
        if rule is not None and rule.status is not None:
            return rule.status, rule.code
        return config.final_status, None

    def latency_s(self, config: SandboxConfig) -> float:
        if config.jitter_ms <= 0.0:
            return config.latency_ms / 1000.0
        with self._lock:
            jitter = self._jitter_rng.uniform(0.0, config.jitter_ms)
        return (config.latency_ms + jitter) / 1000.0
