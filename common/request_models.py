"""What every request body model shares: strict types, unknown fields refused, one way to report errors.

``StrictModel`` is pydantic in strict mode: ``"1"`` is not 1, ``1`` is not ``true``, ``1.0`` is not an
integer, and a field the model does not name is a 422. Strings that carry a type of their own opt back
into parsing (JSON has no UUID or time type): ``Id`` (a UUID written as text) and ``Time`` (ISO-8601 text
with a zone; never a bare number, which pydantic would otherwise read as a Unix timestamp).

``parse_model`` turns a body (already JSON, see ``common.web.parse_json``) into a model, or raises 422
``validation_failed`` naming the first field at fault, with every complaint in ``details``.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, TypeVar
from uuid import UUID

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Strict, ValidationError

from common.api_errors import Unprocessable

_ISO_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}")
TIME_EXAMPLE = "2026-12-06T09:00:00-06:00"


class StrictModel(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False, populate_by_name=True)


def _iso_text(value: Any) -> Any:
    if not isinstance(value, str) or not _ISO_TIME.match(value):
        raise ValueError(f"must be an ISO-8601 time with a zone, e.g. {TIME_EXAMPLE}")
    return value


def _aware(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError(f"needs a time zone, e.g. {TIME_EXAMPLE}")
    return value


Id = Annotated[UUID, Strict(False)]
Time = Annotated[datetime, Strict(False), BeforeValidator(_iso_text), AfterValidator(_aware)]

M = TypeVar("M", bound=BaseModel)


def field_name(loc: tuple[int | str, ...]) -> str:
    """pydantic's error location as our field names: ``("ids", 3)`` -> ``ids[3]``, ``("filter", "from")`` -> ``filter.from``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else ("." if out else "") + str(part)
    return out


def parse_model(model: type[M], payload: Any) -> M:
    """``model`` validated from a JSON body, or ``Unprocessable("validation_failed")`` naming the field at fault."""
    if not isinstance(payload, dict):
        raise Unprocessable("validation_failed", "the body must be a JSON object", field="")
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        details = [
            {"field": field_name(err["loc"]), "message": str(err["msg"]).removeprefix("Value error, ")} for err in exc.errors()
        ]
        first = details[0]
        where = f"{first['field']}: " if first["field"] else ""
        raise Unprocessable("validation_failed", f"{where}{first['message']}", field=first["field"], details=details) from None
