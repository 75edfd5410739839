"""The refusal every limit answers with: 429 and a ``Retry-After`` in whole seconds."""

from __future__ import annotations

from common.api_errors import ApiError
from common.limits.limiter import retry_after_header


class TooManyRequests(ApiError):
    status = 429


def too_many(code: str, message: str, retry_after_s: float) -> TooManyRequests:
    """A 429 whose message and ``Retry-After`` name the same wait (whole seconds, at least 1)."""
    wait = retry_after_header(retry_after_s)
    return TooManyRequests(code, message.format(wait=wait), headers={"Retry-After": wait})


def per(period_s: float) -> str:
    """``60`` -> "minute", ``86400`` -> "day", ``300`` -> "5 minutes": a period as a sentence says it."""
    for unit, length in (("day", 86_400), ("hour", 3_600), ("minute", 60), ("second", 1)):
        if period_s >= length and period_s % length == 0:
            count = int(period_s // length)
            return unit if count == 1 else f"{count} {unit}s"
    return f"{period_s:g} seconds"
