"""The body of ``POST /messages``, validated with pydantic (types, sizes, combinations).

Validation of meaning (is this number real, is this group ours, does the text fit in 10 segments)
happens in ``common.send.service``, where the database is at hand.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, HttpUrl, ValidationError, field_validator, model_validator

from common.api_errors import Unprocessable

max_recipients = 10_000
max_groups = 100
default_deadline_s = 4 * 3600  # as Telnyx's own queue: a text that cannot go out in 4 hours is expired


class SendRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, str_strip_whitespace=False)

    channel: Literal["sms", "mms"]
    to: str | list[str] | None = Field(default=None, description="one number or up to 10,000")
    groups: list[UUID] | None = Field(default=None, max_length=max_groups)
    text: str = Field(default="", max_length=20_000)
    media_urls: list[HttpUrl] | None = Field(default=None, max_length=10)
    from_: str | None = Field(default=None, alias="from")
    send_at: datetime | None = None
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

    @field_validator("text")
    @classmethod
    def _encodable(cls, value: str) -> str:
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("text has a character that is not valid Unicode (a lone surrogate); remove it") from None
        return value

    @field_validator("send_at")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("send_at needs a time zone, e.g. 2026-12-06T09:00:00-06:00")
        return value

    @model_validator(mode="after")
    def _combinations(self) -> SendRequest:
        if not self.to and not self.groups:
            raise ValueError("@to: give 'to' (a number or a list of numbers) or 'groups' (group ids)")
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
