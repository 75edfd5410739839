"""The body of ``POST /messages``, validated with pydantic (types, sizes, combinations).

Validation of meaning (is this number or email address real, is this group ours, does the text fit in 10
segments) happens in ``common.send.service``, where the database is at hand.

Mail (``channel: mail``) carries a ``subject`` (required, one line, at most 998 characters: RFC 5322's
line limit), the plain-text ``text`` (required) and an optional ``html`` part; ``to`` holds email
addresses. SMS and MMS refuse ``subject`` and ``html``; mail refuses ``media_urls`` and ``from`` (mail
always goes out from the configured ``MAIL_FROM``).
"""

from __future__ import annotations

import unicodedata
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    HttpUrl,
    Strict,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from common.api_errors import Unprocessable
from common.media import MAX_MEDIA, MESSAGES
from common.request_models import Id, Time

max_recipients = 10_000
max_groups = 100
default_deadline_s = 4 * 3600  # as Telnyx's own queue: a text that cannot go out in 4 hours is expired
max_subject_length = 998  # characters: RFC 5322's line length limit
max_html_length = 200_000  # characters (at most 800 KB of UTF-8: within the 2 MiB body limit and SES's 10 MB)


class SendRequest(BaseModel):
    # Strict: "true" is not true, "5" is not 5, 5.0 is not an integer (common/request_models.py).
    model_config = ConfigDict(
        extra="forbid",
        populate_by_name=True,
        str_strip_whitespace=False,
        strict=True,
        json_schema_extra={  # in the OpenAPI document (and the fuzzer's first cases)
            "examples": [
                {"channel": "sms", "to": "+13125550142", "text": "Choir practice moved to 7pm"},
                {
                    "channel": "sms",
                    "to": ["(312) 555-0142", "312-555-0199", "nope"],
                    "text": "Advent service at 10am",
                    "skip_invalid": True,
                    "max_attempts": 2,
                    "deadline_s": 3600,
                },
                {
                    "channel": "mms",
                    "to": "+13125550142",
                    "media_urls": ["https://example.org/flyer.jpg"],
                    "send_at": "2030-12-06T09:00:00-06:00",
                },
                {
                    "channel": "mail",
                    "to": ["ann.lee@example.org"],
                    "subject": "Advent newsletter",
                    "text": "Advent services start Sunday at 10am.",
                    "html": "<p>Advent services start <b>Sunday at 10am</b>.</p>",
                },
            ]
        },
    )

    channel: Literal["sms", "mms", "mail"]
    to: str | list[str] | None = Field(
        default=None, description="one number or up to 10,000 (mail: one email address or up to 10,000)"
    )
    groups: list[Id] | None = Field(default=None, max_length=max_groups)
    text: str = Field(default="", max_length=20_000)
    subject: str | None = Field(default=None, max_length=max_subject_length, description="mail only: one line, required")
    html: str | None = Field(default=None, max_length=max_html_length, description="mail only: the HTML part beside text")
    # https only, type and size: common/media.py, when the send is accepted (http passes here, refused there)
    media_urls: list[Annotated[HttpUrl, Strict(False)]] | None = Field(default=None, max_length=MAX_MEDIA)
    from_: str | None = Field(default=None, alias="from")
    send_at: Time | None = None
    skip_invalid: bool = False
    deadline_s: int = Field(default=default_deadline_s, ge=60, le=72 * 3600)
    max_attempts: int = Field(default=4, ge=1, le=10)
    smart_encoding: bool = Field(
        default=True, description="replace look-alikes (curly quotes, dashes...) so the text stays GSM-7"
    )

    @field_validator("to")
    @classmethod
    def _bounded(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > max_recipients:
            raise ValueError(f"at most {max_recipients:,} recipients per request; got {len(value):,}")
        return value

    @field_validator("text", "html", "subject")
    @classmethod
    def _encodable(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(
                f"{info.field_name} has a character that is not valid Unicode (a lone surrogate); remove it"
            ) from None
        if "\x00" in value:
            raise ValueError(f"{info.field_name} has a NUL character (\\u0000); remove it")
        return value

    @field_validator("subject")
    @classmethod
    def _one_line(cls, value: str | None) -> str | None:
        # A line break in a subject would start another mail header ("Bcc: ..."): refuse every control character.
        if value is not None and any(unicodedata.category(ch) in ("Cc", "Zl", "Zp") for ch in value):
            raise ValueError("subject must be one line: no line break, tab or other control character")
        return value

    @field_validator("media_urls", mode="before")
    @classmethod
    def _no_controls(cls, value: Any) -> Any:
        if isinstance(value, list) and len(value) > MAX_MEDIA:
            # Before any item is parsed, in the media check's own words (common/media.py), not pydantic's.
            raise ValueError(MESSAGES["too_many_media"].format(limit=MAX_MEDIA, count=len(value)))
        # A URL parser silently drops tabs and line breaks (WHATWG); refuse them instead of sending another URL.
        if isinstance(value, list):
            for url in value:
                if isinstance(url, str) and any(ord(ch) < 0x20 or 0x7F <= ord(ch) <= 0x9F for ch in url):
                    raise ValueError("media_urls has a control character (a tab, a line break...); remove it")
        return value

    @model_validator(mode="after")
    def _combinations(self) -> SendRequest:
        if not self.to and not self.groups:
            if self.channel == "mail":
                raise ValueError("@to: give 'to' (an email address or a list of them) or 'groups' (group ids)")
            raise ValueError("@to: give 'to' (a number or a list of numbers) or 'groups' (group ids)")
        if self.channel == "mail":
            if self.media_urls:
                raise ValueError("@media_urls: media_urls needs channel 'mms'; mail carries text and html")
            if self.from_ is not None:
                raise ValueError("@from: mail is sent from the configured MAIL_FROM address; leave 'from' out")
            if self.subject is None or not self.subject.strip():
                raise ValueError("@subject: subject is required for mail")
            if not self.text.strip():
                raise ValueError("@text: text is required for mail (the plain-text part; html is optional beside it)")
            return self
        if self.subject is not None:
            raise ValueError("@subject: subject needs channel 'mail'")
        if self.html is not None:
            raise ValueError("@html: html needs channel 'mail'")
        if self.channel == "sms":
            if self.media_urls:
                raise ValueError("@media_urls: media_urls needs channel 'mms'")
            if not self.text.strip():
                raise ValueError("@text: text is required for sms")
        if self.channel == "mms" and not self.media_urls and not self.text.strip():
            raise ValueError("@media_urls: an mms needs media_urls or text")
        return self

    @property
    def recipients(self) -> list[str]:
        if self.to is None:
            return []
        return [self.to] if isinstance(self.to, str) else list(self.to)


def parse_send_request(payload: Any) -> SendRequest:
    """A ``SendRequest``, or ``Unprocessable`` naming every field at fault."""
    if not isinstance(payload, dict):
        raise Unprocessable("validation_failed", "the body must be a JSON object", field="")
    try:
        return SendRequest.model_validate(payload)
    except ValidationError as exc:
        details = [_detail(err) for err in exc.errors()]
        # For a union ("to": a string or a list), the most specific complaint is the useful one.
        first = max(details, key=lambda d: d["field"].count("[") + d["field"].count("."))
        where = f"{first['field']}: " if first["field"] else ""
        raise Unprocessable("validation_failed", f"{where}{first['message']}", field=first["field"], details=details) from None


def _field(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("str", "list[str]", "function-after[_combinations, SendRequest]"):
            continue  # pydantic's union-branch labels, not fields
        else:
            out += ("." if out else "") + ("from" if part == "from_" else str(part))
    return out


def _detail(err: Any) -> dict[str, str]:
    field, message = _field(err["loc"]), str(err["msg"]).removeprefix("Value error, ")
    if message.startswith("@"):  # a cross-field rule names its field: "@text: ..."
        field, _, message = message[1:].partition(": ")
    return {"field": field, "message": message}
