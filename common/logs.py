"""Structured JSON logs on stdout, and the masking every log line of ours goes through.

Never log a phone number, an email address, a message body or a secret: log ids, and
``mask_address()`` when a human needs a hint of which recipient it was.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from datetime import UTC, datetime

from common import constants, log_context


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        # The ids of the request the line was written for (common/log_context.py); outside one, the function.
        ids = log_context.record_ids(record)
        if ids is not None:
            entry.update(ids.log_fields())
        elif function := os.environ.get("FUNCTION_TARGET"):
            entry["function"] = function
        extra = getattr(record, "fields", None)
        if isinstance(extra, dict):
            entry.update(extra)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(level: str | None = None) -> None:
    """JSON logs at ``LOG_LEVEL`` (default INFO); safe to call more than once."""
    root = logging.getLogger()
    root.setLevel(level or os.environ.get(constants.LOG_LEVEL_ENV, "INFO"))
    log_context.install_record_factory()
    if not any(isinstance(h.formatter, JsonFormatter) for h in root.handlers):
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(JsonFormatter())
        root.addHandler(handler)


def mask_address(address: str | None) -> str:
    """``+15551234567`` -> ``+1******4567``; ``ann@example.org`` -> ``a***@example.org``."""
    if not address:
        return ""
    if "@" in address:
        local, _, domain = address.partition("@")
        return f"{local[:1]}***@{domain}"
    if len(address) <= 6:
        return "*" * len(address)
    return address[:2] + "*" * (len(address) - 6) + address[-4:]
