"""Telnyx error bodies: ``{"errors":[{"code","title","detail","source":{"pointer"},"meta":{"url"}}]}``.

``code`` is always a string. Each constructor below is one documented Telnyx error; the HTTP status
beside it is the one Telnyx answers with (see shared/reference/telnyx.md section 2).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

__all__ = ["DEFAULT_DELIVERY_ERRORS", "DELIVERY_ERRORS", "ApiError", "delivery_error"]

_DOCS_URL = "https://developers.telnyx.com/docs/overview/errors/"

# 400xx delivery errors: asynchronous, carried in ``message.finalized`` ``payload.errors[]``
# (telnyx.md section 2, "Messaging error codes"). Titles paraphrase that table.
DELIVERY_ERRORS: dict[str, tuple[str, str]] = {
    "40001": ("Not routable", "The destination number is not routable (for example a landline)."),
    "40002": ("Blocked as spam (temporary)", "The message was temporarily blocked as spam by the carrier."),
    "40003": ("Blocked as spam (permanent)", "The message was permanently blocked as spam by the carrier."),
    "40004": ("Rejected by destination", "The destination carrier rejected the message."),
    "40005": ("Message expired during transmission", "The message expired while in transit."),
    "40006": ("Recipient carrier unavailable", "The recipient's carrier was unavailable."),
    "40008": ("Undeliverable", "The message could not be delivered to the recipient."),
    "40009": ("Invalid message body", "The message body was rejected as invalid."),
    "40011": ("Too many messages", "The upstream carrier rate limit was exceeded."),
    "40012": ("Invalid destination number", "The destination number is unowned or deactivated."),
    "40013": ("Invalid source number", "The source number is not valid for this destination."),
    "40014": ("Message expired in queue", "The message expired before it left the queue; it is not billed."),
    "40015": ("Blocked by spam filter", "The message was blocked by Telnyx's spam filter."),
}

# The code a final status carries when the ``dlr:`` rule names none. Our choice (*ours*):
# delivery_failed -> 40008 "Undeliverable" (generic carrier-side failure), sending_failed -> 40006
# "Recipient carrier unavailable" (never handed to the carrier), expired -> 40014 "Expired in queue".
DEFAULT_DELIVERY_ERRORS: dict[str, str] = {
    "delivery_failed": "40008",
    "sending_failed": "40006",
    "expired": "40014",
}


def delivery_error(code: str) -> dict[str, object]:
    """One Telnyx error object for a delivery webhook's ``errors[]``."""
    title, detail = DELIVERY_ERRORS[code]
    return {"code": code, "title": title, "detail": detail, "meta": {"url": _DOCS_URL + code}}


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
    def invalid_number(cls, name: str) -> ApiError:
        return cls(
            400,
            "10016",
            "Invalid phone number",
            f"The '{name}' parameter must be a phone number in +E.164 format.",
            f"/{name}",
        )

    @classmethod
    def not_configured(cls, detail: str) -> ApiError:
        """A sandbox control request the current configuration cannot serve (sandbox-only)."""
        return cls(409, "10015", "Sandbox not configured", detail)

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
