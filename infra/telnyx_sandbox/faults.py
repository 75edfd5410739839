"""Which fault, if any, a valid send request meets.

Two sources, checked in this order:

1. Deterministic per-number rules keyed by the request's ``to`` (``SandboxConfig.rules``).
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

if TYPE_CHECKING:
    from .config import SandboxConfig

__all__ = ["Fault", "FaultEngine", "Rule", "parse_rule"]


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

    @property
    def accepts(self) -> bool:
        """True when the message is recorded as accepted although the client gets no answer."""
        return self in (Fault.DROP_AFTER_ACCEPT, Fault.TIMEOUT_AFTER_ACCEPT)


_SIMPLE_RULES = {f.value: f for f in Fault if f is not Fault.FAIL_FIRST}


@dataclass(frozen=True, slots=True)
class Rule:
    fault: Fault
    count: int = 0  # only for fail_first:N


def parse_rule(text: str) -> Rule:
    """Parse a rule string: one of the ``Fault`` values, or ``fail_first:N`` (N >= 0)."""
    simple = _SIMPLE_RULES.get(text)
    if simple is not None:
        return Rule(simple)
    name, sep, count = text.partition(":")
    if name == Fault.FAIL_FIRST.value and sep and count.isdigit():
        return Rule(Fault.FAIL_FIRST, int(count))
    allowed = ", ".join([*_SIMPLE_RULES, "fail_first:N"])
    raise ValueError(f"unknown rule {text!r}; expected one of {allowed}")


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

    def decide(self, config: SandboxConfig, to: str) -> tuple[Fault | None, int]:
        """The fault for one valid send to ``to``; second item is the 1-based request count
        for that number under a ``fail_first`` rule (0 otherwise)."""
        with self._lock:
            if config.rules is not self._rules_source:
                # Every config change builds a new rules dict; only a change of content matters.
                if config.rules != self._rules_source:
                    self._update_rules(config.rules)
                self._rules_source = config.rules
            rule = self._rules.get(to)
            if rule is not None:
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

    def latency_s(self, config: SandboxConfig) -> float:
        if config.jitter_ms <= 0.0:
            return config.latency_ms / 1000.0
        with self._lock:
            jitter = self._jitter_rng.uniform(0.0, config.jitter_ms)
        return (config.latency_ms + jitter) / 1000.0
