"""Who may see and act on dead letters: a church (its own, by API key) or the operator (all churches).

``Authorization: Bearer <church API key>`` scopes every read and action to that church: another church's
dead letters behave exactly like missing ones. ``Authorization: Bearer <OPERATOR_TOKEN>`` acts on all
churches; with ``OPERATOR_TOKEN`` unset there is no operator access over HTTP (the ``koinonia dlq``
command, which holds the database credentials itself, always acts as the operator).
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from common.api_errors import Unauthorized
from common.auth.authenticate import authenticate
from common.config import Settings
from common.db.pool import Pool

_UNAUTHORIZED = "send the church's API key (or the operator token) as 'Authorization: Bearer ...'"


@dataclass(frozen=True)
class Scope:
    """What a caller may touch: one church, or every church (``church_id is None``: the operator)."""

    church_id: str | None

    @property
    def is_operator(self) -> bool:
        return self.church_id is None

    @classmethod
    def operator(cls) -> Scope:
        return cls(None)

    @classmethod
    def church(cls, church_id: str) -> Scope:
        return cls(church_id)


def is_operator_token(settings: Settings, presented: str) -> bool:
    """Constant-time comparison with ``OPERATOR_TOKEN``; always False when it is unset."""
    expected = settings.operator_token
    if not expected or not presented:
        return False
    return hmac.compare_digest(presented.encode(), expected.encode())


def authorize(pool: Pool, settings: Settings, authorization: str | None) -> Scope:
    """The caller's scope, or ``Unauthorized`` (missing, malformed, unknown and revoked credentials alike)."""
    scheme, _, presented = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not presented.strip():
        raise Unauthorized("unauthorized", _UNAUTHORIZED)
    if is_operator_token(settings, presented.strip()):
        return Scope.operator()
    try:
        caller = authenticate(pool, authorization)
    except Unauthorized:
        raise Unauthorized("unauthorized", "the API key or operator token is unknown or revoked") from None
    return Scope.church(caller.church_id)
