"""Where ``REDIS_URL`` points, in words safe to print: host, port and database, never the password.

``REDIS_URL`` may carry a password (``redis://:secret@host:6379/0``); an operator's terminal gets copied
into tickets, so everything the checks print about Redis goes through ``RedisTarget.where`` /
``describe``, and any error text from the client through ``scrub``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import parse_qs, quote, unquote, urlsplit

default_port = 6379


@dataclass(frozen=True)
class RedisTarget:
    scheme: str  # redis | rediss (TLS) | unix
    host: str | None  # None for a unix socket
    port: int | None
    socket_path: str | None
    db: str  # as written (the client refuses a non-number; the check says so)
    username: str | None
    has_password: bool
    _password: str | None = field(default=None, repr=False)

    @classmethod
    def from_url(cls, url: str) -> RedisTarget:
        parts = urlsplit(url)
        query = {key: values[-1] for key, values in parse_qs(parts.query).items()}
        try:
            port = parts.port
        except ValueError:  # "host:abc": shown as the default; connecting says what is wrong
            port = None
        if parts.scheme == "unix":
            db = query.get("db", "0")
            return cls("unix", None, None, unquote(parts.path), db, parts.username, bool(parts.password),
                       unquote(parts.password) if parts.password else None)  # fmt: skip
        db = parts.path.lstrip("/") or query.get("db", "0")
        return cls(
            scheme=parts.scheme, host=parts.hostname or "localhost", port=port or default_port, socket_path=None,
            db=db, username=unquote(parts.username) if parts.username else None, has_password=bool(parts.password),
            _password=unquote(parts.password) if parts.password else None,
        )  # fmt: skip

    @property
    def tls(self) -> bool:
        return self.scheme == "rediss"

    @property
    def where(self) -> str:
        """``host:port`` (or the socket path): what to connect to."""
        return self.socket_path or f"{self.host}:{self.port}"

    def describe(self) -> str:
        """``host:port/db`` plus the facts that decide a diagnosis (TLS, a password given), never the password."""
        auth = "a password" if self.has_password else "no password"
        if self.username:
            auth = f"user {self.username} with {auth}"
        transport = "TLS: rediss://" if self.tls else ("unix socket" if self.scheme == "unix" else "no TLS: redis://")
        return f"{self.where}/{self.db} ({transport}, {auth})"

    def scrub(self, text: str) -> str:
        """``text`` with the password (as written and URL-encoded) blanked out."""
        if self._password:
            for form in {self._password, quote(self._password, safe="")}:
                text = text.replace(form, "***")
        return text
