"""When to try a message again: the one place that says how long to wait and when to give up.

Attempt n (1-based) that failed in a retryable way waits ``base_s * 2**(n-1)`` seconds (1 s, 2 s, 4 s
... by default), less up to ``jitter`` of it at random so a burst of failures does not retry in step,
and never more than ``cap_s``. A carrier's own hint (429 ``retry-after`` / rate-limit reset) replaces
the computed wait. A message gets at most ``max_attempts`` carrier attempts, and never one after its
deadline: then it is ``expired`` rather than sent late.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta


@dataclass(frozen=True)
class RetryPolicy:
    base_s: float = 1.0
    cap_s: float = 300.0
    jitter: float = 0.2  # fraction of the wait taken off at random

    def delay_s(self, attempt: int, *, hint_s: float | None = None, rng: random.Random | None = None) -> float:
        if hint_s is not None and hint_s > 0:
            return min(hint_s, self.cap_s)
        full: float = min(self.base_s * 2.0 ** max(attempt - 1, 0), self.cap_s)
        return full * (1 - self.jitter * (rng or random).random())

    def next_attempt_at(
        self, now: datetime, attempt: int, *, hint_s: float | None = None, rng: random.Random | None = None
    ) -> datetime:
        return now + timedelta(seconds=self.delay_s(attempt, hint_s=hint_s, rng=rng))


default_policy = RetryPolicy()
