"""Running the sandbox: an asyncio server for a loop you own, and ``Sandbox`` for a background thread.

``Sandbox`` is what tests use in-process::

    with Sandbox(SandboxConfig(latency_ms=50)) as sb:
        httpx.post(f"{sb.url}/v2/messages", ...)
        assert sb.ledger.accepted == 1

It runs its own event loop in a daemon thread, bound to 127.0.0.1 on a free port by default.
"""

from __future__ import annotations

import asyncio
import importlib
import threading
from types import TracebackType
from typing import Any

from .app import SandboxApp
from .config import SandboxConfig
from .ledger import Ledger
from .protocol import ConnectionTracker, HttpProtocol

__all__ = ["Sandbox", "SandboxServer", "new_event_loop", "start_server"]

_START_TIMEOUT_S = 10.0
_STOP_TIMEOUT_S = 10.0


def new_event_loop() -> asyncio.AbstractEventLoop:
    """A uvloop loop when uvloop is installed (it is optional), else the stdlib loop."""
    try:
        uvloop = importlib.import_module("uvloop")
    except ImportError:
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


class SandboxServer:
    """A listening sandbox on the running loop. Create with ``await start_server(...)``."""

    def __init__(self, app: SandboxApp, server: asyncio.Server, tracker: ConnectionTracker) -> None:
        self.app = app
        self._server = server
        self._tracker = tracker
        sockname = server.sockets[0].getsockname()
        self.host: str = sockname[0]
        self.port: int = sockname[1]

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def close(self) -> None:
        """Stop listening, drop open connections, cancel latency/hold timers and pending webhooks."""
        self._server.close()
        await self._tracker.close_all()
        await self.app.aclose()
        await self._server.wait_closed()


async def start_server(app: SandboxApp, host: str = "127.0.0.1", port: int = 0) -> SandboxServer:
    loop = asyncio.get_running_loop()
    tracker = ConnectionTracker()

    def max_body_bytes() -> int:
        return app.config.max_body_bytes

    def factory() -> HttpProtocol:
        return HttpProtocol(app.handle, tracker, max_body_bytes)

    server = await loop.create_server(factory, host, port, reuse_address=True, backlog=1024)
    return SandboxServer(app, server, tracker)


class Sandbox:
    """A sandbox served from a background thread with its own event loop."""

    def __init__(self, config: SandboxConfig | None = None, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.app = SandboxApp(config)
        self._host = host
        self._port = port
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._server: SandboxServer | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    # Lifecycle -------------------------------------------------------------------------------

    def start(self) -> Sandbox:
        if self._thread is not None:
            raise RuntimeError("sandbox already started")
        self._thread = threading.Thread(target=self._run, name="telnyx-sandbox", daemon=True)
        self._thread.start()
        if not self._ready.wait(_START_TIMEOUT_S):
            raise RuntimeError("sandbox did not start in time")
        if self._error is not None:
            self._thread.join()
            raise RuntimeError("sandbox failed to start") from self._error
        return self

    def stop(self) -> None:
        """Stop serving and join the thread. Idempotent."""
        thread, loop, event = self._thread, self._loop, self._stop_event
        if thread is None:
            return
        if loop is not None and event is not None and thread.is_alive():
            loop.call_soon_threadsafe(event.set)
        thread.join(_STOP_TIMEOUT_S)
        if thread.is_alive():
            raise RuntimeError("sandbox thread did not stop in time")

    def __enter__(self) -> Sandbox:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _run(self) -> None:
        loop = new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve())
        except BaseException as exc:  # reported to start() if it happened before ready
            if not self._ready.is_set():
                self._error = exc
                self._ready.set()
            else:
                raise
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _serve(self) -> None:
        self._stop_event = asyncio.Event()
        self._server = await start_server(self.app, self._host, self._port)
        self._ready.set()
        try:
            await self._stop_event.wait()
        finally:
            await self._server.close()

    # Access ----------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return self._require_server().url

    @property
    def port(self) -> int:
        return self._require_server().port

    @property
    def ledger(self) -> Ledger:
        return self.app.ledger

    @property
    def config(self) -> SandboxConfig:
        return self.app.config

    def configure(self, **changes: Any) -> SandboxConfig:
        """Change the running config, e.g. ``sb.configure(latency_ms=200, rules={...})``."""
        return self.app.configure(changes)

    def reset(self) -> None:
        """Startup config, empty ledger, reseeded RNG, no pending webhooks, empty block list."""
        self.app.reset()

    @property
    def webhook_public_key(self) -> str:
        """base64 of the raw Ed25519 public key that verifies this sandbox's webhooks."""
        return self.app.webhook_public_key

    def wait_webhooks_idle(self, timeout: float = 10.0) -> bool:
        """Wait until every webhook delivery scheduled so far is done; False on timeout."""
        return self.app.wait_webhooks_idle(timeout)

    def block(self, from_: str, to: str) -> bool:
        """Block ``to`` on the messaging profile of church number ``from_`` (as a STOP would)."""
        return self.app.block(from_, to)

    def unblock(self, from_: str, to: str) -> bool:
        return self.app.unblock(from_, to)

    def blocks(self) -> list[dict[str, str]]:
        """``[{"profile": ..., "number": ...}]``."""
        return self.app.blocks.to_list()

    def _require_server(self) -> SandboxServer:
        if self._server is None:
            raise RuntimeError("sandbox is not running; use `with Sandbox(...)` or .start()")
        return self._server
