"""Errors a caller can hit, and the one mapping from error to HTTP answer.

Every answer is ``{"error": {"code", "message", "field"?, "details"?}}``: a stable code to branch on,
a sentence that says what to do, and the field at fault (JSON-pointer-ish: ``to[3]``, ``groups[0]``).

    ApiError (status, code)
    ├── BadRequest            400 invalid_json, json_too_deep, duplicate_key, ...
    ├── Unauthorized          401 unauthorized, signature_missing
    ├── Forbidden             403 signature_mismatch, timestamp_out_of_tolerance
    ├── NotFound              404 not_found (also for another church's ids: nothing leaks)
    ├── Conflict              409 idempotency_conflict
    ├── PayloadTooLarge       413 payload_too_large
    ├── Unprocessable         422 validation_failed, invalid_string, invalid_recipients, text_too_long, ...
    └── ServiceUnavailable    503 database_unavailable

Each function's ``GET /openapi.json`` lists, per route, every status and code it can answer (common/openapi.py).
"""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    status = 400

    def __init__(
        self,
        code: str,
        message: str,
        *,
        field: str | None = None,
        details: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field
        self.details = details
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.field is not None:
            error["field"] = self.field
        if self.details:
            error["details"] = self.details
        return {"error": error}


class BadRequest(ApiError):
    status = 400


class Unauthorized(ApiError):
    status = 401


class Forbidden(ApiError):
    status = 403


class NotFound(ApiError):
    status = 404


class MethodNotAllowed(ApiError):
    status = 405


class Conflict(ApiError):
    status = 409


class PayloadTooLarge(ApiError):
    status = 413


class Unprocessable(ApiError):
    status = 422


class ServiceUnavailable(ApiError):
    status = 503
