"""Rate limits: token buckets in Redis (Lua, atomic) with an in-process fallback."""

from common.limits.limiter import Decision, Limiter, Rate

__all__ = ["Decision", "Limiter", "Rate"]
