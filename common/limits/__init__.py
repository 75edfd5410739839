"""Rate limits: token buckets in Redis (Lua, atomic) with an in-process fallback.

``limiter``        GCRA buckets, one-request admission (buckets + cached allowance, all or nothing)
``auth_failures``  failed authentication per client address (``common.web.dispatch``)
``sends``          per-church send limits and the plan's quota (``common.send.service.accept_in``)
"""

from common.limits.limiter import Admission, Allowance, Decision, Draw, Limiter, Rate, Take, limiter_for

__all__ = ["Admission", "Allowance", "Decision", "Draw", "Limiter", "Rate", "Take", "limiter_for"]
