"""Who may see and act on dead letters: a church (its own, by API key) or the operator (all churches).

``Authorization: Bearer <church API key>`` scopes every read and action to that church: another church's
dead letters behave exactly like missing ones. ``Authorization: Bearer <OPERATOR_TOKEN>`` acts on all
churches; with ``OPERATOR_TOKEN`` unset there is no operator access over HTTP (the ``koinonia dlq``
command, which holds the database credentials itself, always acts as the operator).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from common.api_errors import Unauthorized
from common.auth.authenticate import authenticate, bearer_token
from common.auth.cache import KeyCache
from common.auth.operator import OPERATOR_ACTOR, is_operator_token
from common.config import Settings
from common.db.pool import Pool

__all__ = ["Scope", "authorize", "is_operator_token"]

_UNAUTHORIZED = "send the church's API key (or the operator token) as 'Authorization: Bearer ...'"


@dataclass(frozen=True)
class Scope:
    """What a caller may touch: one church, or every church (``church_id is None``: the operator)."""

    church_id: str | None
    # How the audit log names the caller: ``church:<key prefix>``, ``operator``; None when not known (a
    # scope built by a command narrowing to a church). Not part of equality: it does not change the scope.
    actor: str | None = field(default=None, compare=False)

    @property
    def is_operator(self) -> bool:
        return self.church_id is None

    @property
    def audit_actor(self) -> str:
        """The audit log's name for the caller (``church:<key prefix>`` when a key is known)."""
        return self.actor or ("operator" if self.church_id is None else f"church:{self.church_id}")

    @classmethod
    def operator(cls) -> Scope:
        return cls(None, OPERATOR_ACTOR)

    @classmethod
    def church(cls, church_id: str, actor: str | None = None) -> Scope:
        return cls(church_id, actor)


def authorize(pool: Pool, settings: Settings, authorization: str | None, *, cache: KeyCache | None = None) -> Scope:
    """The caller's scope, or ``Unauthorized`` (missing, malformed, unknown and revoked credentials alike)."""
    presented = bearer_token(authorization)
    if presented is None:
        raise Unauthorized("unauthorized", _UNAUTHORIZED)
    if is_operator_token(settings, presented):
        return Scope.operator()
    try:
        caller = authenticate(pool, authorization, cache=cache)
    except Unauthorized:
        raise Unauthorized("unauthorized", "the API key or operator token is unknown or revoked") from None
    return Scope.church(caller.church_id, caller.actor)
