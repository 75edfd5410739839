"""Email addresses: check what a church typed, store one normal form, say why an address is refused.

``email-validator`` is not a dependency (pydantic's ``EmailStr`` needs it), so this is a careful regex
over what Amazon SES (classic ``SendEmail``) can carry, not all that RFC 5322 allows:

- one ``@``; a local part of "dot-atom" characters (letters, digits and ``!#$%&'*+/=?^_`{|}~-``, dots
  between them, never two in a row or at either end), at most 64 characters, ASCII only (SES does not
  support SMTPUTF8). Quoted local parts (``"john doe"@x.org``) and comments are refused: legal, but
  never what a member's address really is, and a common way to smuggle a second recipient.
- a domain name (no IP literal) of at least two labels, each 1-63 letters, digits or hyphens (not at
  either end), at most 253 characters, the last label not all digits. A non-ASCII domain
  (``pfarrei-köln.de``) is converted to its IDNA form (``xn--pfarrei-kln-...``), as SES requires.
- at most 254 characters in all (RFC 5321's path limit less the angle brackets).

Normal form: surrounding whitespace trimmed, the domain lower-cased (domains are case-insensitive), the
local part kept as typed (only the receiving server may decide it is case-insensitive). Lookup hashes
(``contacts.email_hash``, ``messages.to_hash``, ``opt_outs.address_hash``) are computed over this form,
so contacts must be stored in it too.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

__all__ = ["InvalidEmail", "normalize_email"]

max_length = 254
max_local_length = 64
max_domain_length = 253

_LOCAL = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")


@dataclass(frozen=True)
class InvalidEmail(Exception):
    reason: str

    def __str__(self) -> str:
        return self.reason


def normalize_email(raw: str) -> str:
    """``" Ann.Lee@Example.ORG "`` -> ``"Ann.Lee@example.org"``; ``InvalidEmail`` with a reason a person understands."""
    text = raw.strip()
    if not text:
        raise InvalidEmail("empty")
    if len(text) > max_length * 4:  # before any work on it; the exact limit is checked on the normal form
        raise InvalidEmail(f"too long (at most {max_length} characters)")
    if any(unicodedata.category(ch) in ("Cc", "Zl", "Zp") for ch in text):
        raise InvalidEmail("has a control character (a line break, a tab, NUL...)")
    if any(ch in text for ch in '<>,;"()[]\\'):
        raise InvalidEmail("one plain address only (no name, angle brackets, quotes, commas or lists)")
    if any(ch.isspace() for ch in text):
        raise InvalidEmail("has a space inside")
    if text.count("@") != 1:
        raise InvalidEmail("must have exactly one @" if "@" in text else "missing the @")
    local, domain = text.split("@")
    if not local:
        raise InvalidEmail("missing the part before the @")
    if not domain:
        raise InvalidEmail("missing the domain after the @")
    if len(local) > max_local_length:
        raise InvalidEmail(f"the part before the @ is longer than {max_local_length} characters")
    if not local.isascii():
        raise InvalidEmail("the part before the @ must be ASCII (letters without accents, digits, . _ + -)")
    if not _LOCAL.fullmatch(local):
        raise InvalidEmail("the part before the @ has a character not allowed there, or a misplaced dot")
    domain = _domain(domain)
    address = f"{local}@{domain}"
    if len(address) > max_length:
        raise InvalidEmail(f"too long (at most {max_length} characters)")
    return address


def _domain(raw: str) -> str:
    domain = raw.lower()
    if domain.endswith("."):
        domain = domain[:-1]  # the root label ("example.org."): same domain
    if not domain.isascii():
        try:
            domain = domain.encode("idna").decode("ascii")
        except UnicodeError:
            raise InvalidEmail("the domain is not a valid international domain name") from None
    if len(domain) > max_domain_length:
        raise InvalidEmail(f"the domain is longer than {max_domain_length} characters")
    labels = domain.split(".")
    if len(labels) < 2:
        raise InvalidEmail("the domain needs a dot (example.org)")
    for label in labels:
        if not _LABEL.fullmatch(label):
            raise InvalidEmail("the domain has an empty part, a character not allowed there, or a hyphen at an end")
    if labels[-1].isdigit():
        raise InvalidEmail("the domain must be a name, not an IP address")
    return domain
