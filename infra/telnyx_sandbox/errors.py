"""Telnyx error bodies: ``{"errors":[{"code","title","detail","source":{"pointer"},"meta":{"url"}}]}``.

``code`` is always a string. Each constructor below is one documented Telnyx error; the HTTP status
beside it is the one Telnyx answers with (see shared/reference/telnyx.md section 2).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

__all__ = ["ApiError"]

_DOCS_URL = "https://developers.telnyx.com/docs/overview/errors/"


@dataclass(frozen=True, slots=True)
class ApiError:
    status: int
    code: str
    title: str
    detail: str
    pointer: str | None = None

    def to_dict(self) -> dict[str, object]:
        error: dict[str, object] = {"code": self.code, "title": self.title, "detail": self.detail}
        if self.pointer is not None:
            error["source"] = {"pointer": self.pointer, "parameter": None}
        error["meta"] = {"url": _DOCS_URL + self.code}
        return {"errors": [error]}

    def body(self) -> bytes:
        return json.dumps(self.to_dict(), separators=(",", ":")).encode()

    # 1xxxx: request errors -------------------------------------------------------------------

    @classmethod
    def auth_failed(cls) -> ApiError:
        return cls(
            401,
            "10009",
            "Authentication failed",
            "The required authentication headers were either invalid or not included in the request.",
        )

    @classmethod
    def bad_request(cls, detail: str, pointer: str | None = None) -> ApiError:
        return cls(400, "10015", "Bad Request", detail, pointer)

    @classmethod
    def missing_parameter(cls, name: str) -> ApiError:
        return cls(400, "10004", "Missing required parameter", f"The '{name}' parameter is required.", f"/{name}")

    @classmethod
    def not_found(cls, detail: str = "The requested resource or URL could not be found.") -> ApiError:
        return cls(404, "10005", "Resource not found", detail)

    @classmethod
    def method_not_allowed(cls) -> ApiError:
        return cls(405, "10015", "Bad Request", "This method is not allowed on this resource.")

    @classmethod
    def unexpected(cls, status: int = 500) -> ApiError:
        return cls(status, "10007", "Unexpected error", "An unexpected error occurred.")

    @classmethod
    def too_many_requests(cls) -> ApiError:
        return cls(429, "10011", "Too many requests", "You have exceeded the maximum number of allowed requests.")

    @classmethod
    def body_too_large(cls, limit: int) -> ApiError:
        return cls(413, "10015", "Bad Request", f"The request body exceeds {limit} bytes.")

    # 403xx: messaging request errors ---------------------------------------------------------

    @classmethod
    def blocked(cls, from_: str, to: str) -> ApiError:
        return cls(
            409,
            "40300",
            "Blocked due to STOP message",
            f"Messages cannot be sent from '{from_}' to '{to}' due to an existing block rule.",
            "/to",
        )

    @classmethod
    def too_large(cls, parts: int) -> ApiError:
        return cls(
            400,
            "40302",
            "Message too large",
            f"The message would be sent in {parts} parts; the maximum is 10.",
            "/text",
        )

    @classmethod
    def invalid_content_combination(cls, detail: str) -> ApiError:
        return cls(400, "40304", "Invalid content combination", detail, "/type")

    @classmethod
    def invalid_from(cls) -> ApiError:
        return cls(
            400,
            "40305",
            "Invalid 'from' address",
            "The 'from' address should be string containing a valid number associated with the sending messaging profile.",
            "/from",
        )

    @classmethod
    def invalid_to(cls) -> ApiError:
        return cls(
            400,
            "40310",
            "Invalid 'to' address",
            "The 'to' address should be a string containing a valid number in +E.164 format.",
            "/to",
        )

    @classmethod
    def no_content(cls) -> ApiError:
        return cls(400, "40316", "No content provided", "The message must have 'text' or 'media_urls'.", "/text")

    @classmethod
    def invalid_mms_content(cls, detail: str) -> ApiError:
        return cls(400, "40317", "Invalid MMS content", detail, "/media_urls")
