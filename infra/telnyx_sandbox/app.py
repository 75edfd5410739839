"""Routing and request handling: the Telnyx ``/v2/messages`` surface and the ``/_sandbox`` control API.

Order of checks for ``POST /v2/messages`` (each stage answers and stops):

1. auth (401/10009), 2. JSON and field validation (400/10015, 10004, 40310, 40305, 40316, 40302 ...),
3. the per-number rule for ``to``, 4. the probabilistic faults, 5. accept.

Faults apply only to requests that passed validation, so a validation error is always permanent and
reproducible, and fault rates are shares of the traffic a correct client sends.

Everything is decided and recorded in the ledger when the request arrives; configured latency then
delays only the answer (or the close). So once a client has seen its answer, or its connection
error, the ledger already reflects that request.

A block rule (STOP, see blocklist.py) for (profile of ``from``, ``to``) answers 409/40300 right
after validation, before the per-number rules. An accepted send with a webhook URL (its own or the
profile's ``default_webhook_url``) gets its ``message.sent`` / ``message.finalized`` webhooks
scheduled on this loop (webhooks.py); the answer never waits for them. Without a URL the send
path does no webhook work at all.

Nothing here logs phone numbers or message bodies.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs

from .blocklist import BlockList, Keyword, classify_keyword, profile_of
from .config import SandboxConfig
from .errors import ApiError
from .faults import Fault, FaultEngine
from .inbound import build_inbound_payload, parse_inbound_request
from .ledger import Ledger
from .payload import build_payload
from .protocol import CLOSE, Action, Hold, Request, Response
from .signing import Signer
from .validation import E164, SendRequest, parse_send_request
from .webhooks import WebhookDispatcher, outbound_urls

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
        self.blocks = BlockList()
        # Used whenever the config has no webhook_signing_key; kept across configure() and reset().
        self._generated_signer = Signer.generate()
        self._signer = self._generated_signer
        self._signer_seed: str | None = None
        self.webhooks = WebhookDispatcher(self.ledger, self._signer, self._config.seed)
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
                self.webhooks.reseed(new.seed)
            self._apply(new)
            return new

    def reset(self) -> None:
        """Back to the startup config, an empty ledger, a fresh RNG and no fail_first progress;
        pending webhook deliveries are cancelled and the block list is emptied."""
        with self._lock:
            self._apply(self.startup_config)
            self.faults.reseed(self.startup_config.seed)
            self.faults.reset_rules(self.startup_config.rules)
            self.webhooks.cancel_all()
            self.webhooks.reseed(self.startup_config.seed)
            self.blocks.clear()
            self.ledger.clear()

    def _apply(self, config: SandboxConfig) -> None:
        seed = config.webhook_signing_key
        if seed != self._signer_seed:
            self._signer = self._generated_signer if seed is None else Signer.from_seed(seed)
            self._signer_seed = seed
            self.webhooks.signer = self._signer
        self._auth = f"Bearer {config.api_key}".encode()
        self._rate_limit_headers = (
            f"x-ratelimit-limit: {config.ratelimit_limit}\r\n"
            "x-ratelimit-remaining: 0\r\n"
            f"x-ratelimit-reset: {config.ratelimit_reset_s}\r\n"
            f"retry-after: {config.ratelimit_reset_s}\r\n"
        ).encode()
        self._config = config  # last: a request reading config sees the matching headers

    # Webhooks and block list ---------------------------------------------------------------------

    @property
    def webhook_public_key(self) -> str:
        """base64 of the raw 32-byte Ed25519 public key webhooks are signed with."""
        return self._signer.public_key

    @property
    def webhooks_pending(self) -> int:
        """Accepted messages and inbound events whose webhook deliveries are not finished."""
        return self.webhooks.pending

    def webhooks_idle(self) -> bool:
        """True when no webhook delivery is pending (does not wait)."""
        return self.webhooks.pending == 0

    def wait_webhooks_idle(self, timeout: float | None = None) -> bool:
        """Block (from another thread than the sandbox's loop) until no delivery is pending;
        False on timeout. Every send answered before the call is covered."""
        return self.webhooks.wait_idle(timeout)

    def block(self, from_: str, to: str) -> bool:
        """Add the block rule a STOP from ``to`` to church number ``from_`` would create."""
        return self.blocks.add(profile_of(self._config.number_profiles, from_), to)

    def unblock(self, from_: str, to: str) -> bool:
        """Lift it (what START does); False when there was none."""
        return self.blocks.remove(profile_of(self._config.number_profiles, from_), to)

    async def aclose(self) -> None:
        """Cancel pending webhook deliveries and close their HTTP client (on the loop)."""
        await self.webhooks.aclose()

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
        if self.blocks and self.blocks.is_blocked(profile_of(config.number_profiles, parsed.from_), parsed.to):
            err = ApiError.blocked(parsed.from_, parsed.to)
            ledger.record_answer(err.status, err.code)
            return delay, _error(err)

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
        if config.webhooks and (parsed.webhook_url or config.default_webhook_url):
            self._schedule_webhooks(parsed, config, payload, received)
        return body

    def _schedule_webhooks(self, parsed: SendRequest, config: SandboxConfig, payload: dict[str, Any], received: datetime) -> None:
        urls = outbound_urls(
            parsed.webhook_url, parsed.webhook_failover_url, parsed.use_profile_webhooks, config.default_webhook_url
        )
        if urls:
            status, code = self.faults.final_status(config, parsed.to)
            self.webhooks.schedule_outbound(config, payload, received, urls, status, code)

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
            summary = self.ledger.summary(include_entries=include)
            summary["webhooks"]["pending"] = self.webhooks.pending
            return Response(200, _json(summary))
        if name == "config":
            if method == "GET":
                return Response(200, _json({"config": _config_view(self._config)}))
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
            return Response(200, _json({"config": _config_view(config)}))
        if name == "reset":
            if method != "POST":
                return _error(ApiError.method_not_allowed())
            self.reset()
            return Response(200, _json({"config": _config_view(self._config)}))
        if name == "webhook-key":
            if method != "GET":
                return _error(ApiError.method_not_allowed())
            return Response(200, _json({"public_key": self.webhook_public_key}))
        if name == "webhooks/pending":
            if method != "GET":
                return _error(ApiError.method_not_allowed())
            return Response(200, _json({"pending": self.webhooks.pending}))
        if name == "inbound":
            if method != "POST":
                return _error(ApiError.method_not_allowed())
            return self._inbound(request)
        if name == "blocks":
            if method == "GET":
                return Response(200, _json({"blocks": self.blocks.to_list()}))
            if method != "POST":
                return _error(ApiError.method_not_allowed())
            return self._change_block(request, self.block)
        if name == "blocks/remove":
            if method != "POST":
                return _error(ApiError.method_not_allowed())
            return self._change_block(request, self.unblock)
        return _error(ApiError.not_found())

    def _change_block(self, request: Request, change: Callable[[str, str], bool]) -> Response:
        try:
            data = json.loads(request.body or b"{}")
        except (ValueError, UnicodeDecodeError):
            return _error(ApiError.bad_request("The request body is not valid JSON."))
        if not isinstance(data, dict):
            return _error(ApiError.bad_request("The request body must be a JSON object."))
        from_, to = data.get("from"), data.get("to")
        if from_ is None:
            return _error(ApiError.missing_parameter("from"))
        if not isinstance(from_, str) or not from_:
            return _error(ApiError.invalid_from())
        if to is None:
            return _error(ApiError.missing_parameter("to"))
        if not isinstance(to, str) or not E164.fullmatch(to):
            return _error(ApiError.invalid_to())
        changed = change(from_, to)
        return Response(200, _json({"changed": changed, "blocks": self.blocks.to_list()}))

    def _inbound(self, request: Request) -> Response:
        """``POST /_sandbox/inbound``: keyword block rules, then a ``message.received`` webhook."""
        config = self._config
        parsed = parse_inbound_request(request.body)
        if isinstance(parsed, ApiError):
            return _error(parsed)
        url = config.inbound_webhook_url
        if url is None:
            return _error(
                ApiError.not_configured(
                    "No messaging profile webhook for inbound messages: set inbound_webhook_url "
                    "(POST /_sandbox/config or --inbound-webhook-url)."
                )
            )
        keyword = classify_keyword(parsed.text)
        profile = profile_of(config.number_profiles, parsed.to)
        # Telnyx's default opt-out handling blocks and auto-replies together; with autorespond off the
        # profile models keyword handling left entirely to us: no block rule either.
        if keyword is Keyword.STOP and config.autorespond:
            self.blocks.add(profile, parsed.from_)
        elif keyword is Keyword.START and config.autorespond:
            self.blocks.remove(profile, parsed.from_)
        autoresponse = keyword.value if keyword is not None and config.autorespond else None
        received = datetime.now(UTC)
        payload = build_inbound_payload(
            parsed,
            received_at=received,
            messaging_profile_id=config.number_profiles.get(parsed.to, config.messaging_profile_id),
            cost_per_part_usd=config.cost_per_part_usd,
            webhook_url=url,
            autoresponse_type=autoresponse,
        )
        self.ledger.record_inbound(autoresponse)
        if config.webhooks:
            self.webhooks.schedule_inbound(config, payload, received, url)
        return Response(200, _json({"data": payload}))


def _config_view(config: SandboxConfig) -> dict[str, Any]:
    """The config as the control API shows it: the private signing seed is never echoed."""
    view = config.to_dict()
    if view["webhook_signing_key"] is not None:
        view["webhook_signing_key"] = "<set>"
    return view


def _error(err: ApiError) -> Response:
    return Response(err.status, err.body())
