"""Routing and request handling: the Telnyx ``/v2/messages`` surface and the ``/_sandbox`` control API.

Order of checks for ``POST /v2/messages`` (each stage answers and stops):

1. auth (401/10009), 2. JSON and field validation (400/10015, 10004, 40310, 40305, 40316, 40302 ...),
3. the per-number rule for ``to``, 4. the probabilistic faults, 5. accept.

Faults apply only to requests that passed validation, so a validation error is always permanent and
reproducible, and fault rates are shares of the traffic a correct client sends.

Everything is decided and recorded in the ledger when the request arrives; configured latency then
delays only the answer (or the close). So once a client has seen its answer, or its connection
error, the ledger already reflects that request.

Nothing here logs phone numbers or message bodies.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs

from .config import SandboxConfig
from .errors import ApiError
from .faults import Fault, FaultEngine
from .ledger import Ledger
from .payload import build_payload
from .protocol import CLOSE, Action, Hold, Request, Response
from .validation import SendRequest, parse_send_request

__all__ = ["SandboxApp"]

_MESSAGES = "/v2/messages"
_MESSAGES_PREFIX = "/v2/messages/"
_NO_DELAY = 0.0


def _json(data: object) -> bytes:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()


class SandboxApp:
    """The request handler. Thread-safe: tests configure it while the server thread serves."""

    def __init__(self, config: SandboxConfig | None = None, ledger: Ledger | None = None) -> None:
        self.startup_config = config or SandboxConfig()
        self._config = self.startup_config
        self.ledger = ledger or Ledger()
        self.faults = FaultEngine(self._config)
        self._lock = threading.Lock()
        self._auth: bytes = b""
        self._rate_limit_headers: bytes = b""
        self._apply(self._config)

    # Configuration ---------------------------------------------------------------------------

    @property
    def config(self) -> SandboxConfig:
        return self._config

    def configure(self, changes: Mapping[str, Any]) -> SandboxConfig:
        """Apply ``changes`` (SandboxConfig field names) at runtime; raises ValueError if invalid."""
        with self._lock:
            new = self._config.with_changes(changes)
            if "seed" in changes:
                self.faults.reseed(new.seed)
            self._apply(new)
            return new

    def reset(self) -> None:
        """Back to the startup config, an empty ledger, a fresh RNG and no fail_first progress."""
        with self._lock:
            self._apply(self.startup_config)
            self.faults.reseed(self.startup_config.seed)
            self.faults.reset_rules(self.startup_config.rules)
            self.ledger.clear()

    def _apply(self, config: SandboxConfig) -> None:
        self._auth = f"Bearer {config.api_key}".encode()
        self._rate_limit_headers = (
            f"x-ratelimit-limit: {config.ratelimit_limit}\r\n"
            "x-ratelimit-remaining: 0\r\n"
            f"x-ratelimit-reset: {config.ratelimit_reset_s}\r\n"
            f"retry-after: {config.ratelimit_reset_s}\r\n"
        ).encode()
        self._config = config  # last: a request reading config sees the matching headers

    # Dispatch --------------------------------------------------------------------------------

    def handle(self, request: Request) -> tuple[float, Action]:
        path = request.path
        if path == _MESSAGES:
            if request.method != "POST":
                return _NO_DELAY, _error(ApiError.method_not_allowed())
            return self._send(request)
        if path.startswith(_MESSAGES_PREFIX):
            if request.method != "GET":
                return _NO_DELAY, _error(ApiError.method_not_allowed())
            return self._get_message(request, path[len(_MESSAGES_PREFIX) :])
        if path.startswith("/_sandbox/"):
            return _NO_DELAY, self._control(request, path[len("/_sandbox/") :])
        return _NO_DELAY, _error(ApiError.not_found())

    # Telnyx API ------------------------------------------------------------------------------

    def _authorised(self, request: Request, config: SandboxConfig) -> bool:
        header = request.headers.get(b"authorization")
        if header is None:
            return False
        if header == self._auth:
            return True
        scheme, _, token = header.partition(b" ")
        return scheme.lower() == b"bearer" and token.strip() == config.api_key.encode()

    def _send(self, request: Request) -> tuple[float, Action]:
        config = self._config
        delay = self.faults.latency_s(config)
        ledger = self.ledger
        if not self._authorised(request, config):
            err = ApiError.auth_failed()
            ledger.record_answer(err.status, err.code)
            return delay, _error(err)
        parsed = parse_send_request(request.body, config.allowed_from)
        if isinstance(parsed, ApiError):
            ledger.record_answer(parsed.status, parsed.code)
            return delay, _error(parsed)

        fault, _ = self.faults.decide(config, parsed.to)
        if fault is None:
            body = self._accept(parsed, config, "accepted")
            ledger.record_answer(200)
            return delay, Response(200, body)
        if fault.accepts:
            self._accept(parsed, config, fault.value)
            ledger.record_unanswered(fault.value)
            if fault is Fault.TIMEOUT_AFTER_ACCEPT:
                return delay, Hold(config.timeout_hold_s)
            return delay, CLOSE
        if fault is Fault.DROP_BEFORE_ACCEPT:
            ledger.record_unanswered(fault.value)
            return delay, CLOSE
        if fault is Fault.TIMEOUT:
            ledger.record_unanswered(fault.value)
            return delay, Hold(config.timeout_hold_s)

        if fault is Fault.BLOCKED:
            err = ApiError.blocked(parsed.from_, parsed.to)
        elif fault is Fault.INVALID:
            err = ApiError.invalid_to()
        elif fault is Fault.RATE_LIMITED:
            err = ApiError.too_many_requests()
        elif fault is Fault.FAIL_FIRST:
            err = ApiError.unexpected(503)
        else:
            err = ApiError.unexpected(config.status_5xx)
        ledger.record_answer(err.status, err.code)
        headers = self._rate_limit_headers if fault is Fault.RATE_LIMITED else b""
        return delay, Response(err.status, err.body(), headers)

    def _accept(self, parsed: SendRequest, config: SandboxConfig, outcome: str) -> bytes:
        received = datetime.now(UTC)
        payload = build_payload(
            parsed,
            received_at=received,
            messaging_profile_id=config.messaging_profile_id,
            organization_id=config.organization_id,
            cost_per_part_usd=config.cost_per_part_usd,
        )
        body = _json({"data": payload})
        self.ledger.record_accepted(
            id=payload["id"],
            to=parsed.to,
            from_=parsed.from_,
            text=parsed.text,
            media_urls=parsed.media_urls,
            webhook_url=parsed.webhook_url,
            type=parsed.type,
            received_at=payload["received_at"],
            outcome=outcome,
            body=body,
        )
        return body

    def _get_message(self, request: Request, message_id: str) -> tuple[float, Action]:
        config = self._config
        delay = self.faults.latency_s(config)
        if not self._authorised(request, config):
            return delay, _error(ApiError.auth_failed())
        body = self.ledger.message_body(message_id)
        if body is None:
            return delay, _error(ApiError.not_found("No message with this id."))
        return delay, Response(200, body)

    # Control API -----------------------------------------------------------------------------

    def _control(self, request: Request, name: str) -> Response:
        method = request.method
        if name == "health":
            if method != "GET":
                return _error(ApiError.method_not_allowed())
            return Response(200, _json({"status": "ok"}))
        if name == "ledger":
            if method != "GET":
                return _error(ApiError.method_not_allowed())
            flags = parse_qs(request.query).get("entries", ["0"])
            include = flags[-1].lower() in ("1", "true", "yes")
            return Response(200, _json(self.ledger.summary(include_entries=include)))
        if name == "config":
            if method == "GET":
                return Response(200, _json({"config": self._config.to_dict()}))
            if method != "POST":
                return _error(ApiError.method_not_allowed())
            try:
                changes = json.loads(request.body or b"{}")
            except (ValueError, UnicodeDecodeError):
                return _error(ApiError.bad_request("The request body is not valid JSON."))
            if not isinstance(changes, dict):
                return _error(ApiError.bad_request("The request body must be a JSON object."))
            try:
                config = self.configure(changes)
            except ValueError as exc:
                return _error(ApiError.bad_request(str(exc)))
            return Response(200, _json({"config": config.to_dict()}))
        if name == "reset":
            if method != "POST":
                return _error(ApiError.method_not_allowed())
            self.reset()
            return Response(200, _json({"config": self._config.to_dict()}))
        return _error(ApiError.not_found())


def _error(err: ApiError) -> Response:
    return Response(err.status, err.body())
