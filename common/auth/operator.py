"""The operator credential: ``Authorization: Bearer <OPERATOR_TOKEN>``, for cross-church work.

It is not a church key and never acts as one: routes for one church (``/keys``, ``/messages``, ...) want
a church key; operator routes (``/churches/{church_id}/...``, all dead letters) want this token, and a
church key there is ``403 operator_only``. Compared in constant time; with ``OPERATOR_TOKEN`` unset
there is no operator over HTTP at all (the ``koinonia`` command, holding the database credentials,
acts as the operator on its own).
"""

from __future__ import annotations

import hmac

from common.api_errors import Forbidden, Unauthorized
from common.auth.authenticate import Caller, authenticate, bearer_token
from common.auth.cache import KeyCache
from common.config import Settings
from common.db.pool import Pool

OPERATOR_ACTOR = "operator"


def is_operator_token(settings: Settings, presented: str | None) -> bool:
    """Constant-time comparison with ``OPERATOR_TOKEN``; always False when it is unset."""
    expected = settings.operator_token
    if not expected or not presented:
        return False
    return hmac.compare_digest(presented.encode(), expected.encode())


def is_operator(settings: Settings, authorization: str | None) -> bool:
    return is_operator_token(settings, bearer_token(authorization))


def require_operator(pool: Pool, settings: Settings, authorization: str | None, *, cache: KeyCache | None = None) -> None:
    """Return if the caller is the operator; ``403 operator_only`` for a valid church key; else 401."""
    presented = bearer_token(authorization)
    if presented is None:
        raise Unauthorized("unauthorized", "send the operator token as 'Authorization: Bearer ...'")
    if is_operator_token(settings, presented):
        return
    try:
        authenticate(pool, authorization, cache=cache)
    except Unauthorized:
        raise Unauthorized("unauthorized", "the operator token is wrong (or OPERATOR_TOKEN is not set)") from None
    raise Forbidden(
        "operator_only",
        "this route is for the operator (OPERATOR_TOKEN); a church manages its own keys at /keys and reads /audit",
    )


def require_church(pool: Pool, settings: Settings, authorization: str | None, *, cache: KeyCache | None = None) -> Caller:
    """The calling church; the operator token here is ``403 church_key_required`` (it names no church)."""
    if is_operator(settings, authorization):
        raise Forbidden(
            "church_key_required",
            "this route acts on the calling church; the operator uses /churches/{church_id}/keys and /churches/{church_id}/audit",
        )
    return authenticate(pool, authorization, cache=cache)
