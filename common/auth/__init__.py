"""Church API keys: shown once, stored as a hash, found by prefix; and the operator credential.

``api_keys`` (format, hash), ``authenticate`` (who is calling), ``cache`` (verified keys in Redis and why
a revoke always wins), ``keys`` (create, list, revoke, audited), ``operator`` (``OPERATOR_TOKEN``),
``api`` (the HTTP routes on the send function), ``cli`` (``koinonia keys``).
"""

from common.auth.api_keys import IssuedKey, hash_key, issue_key, parse_key

__all__ = ["IssuedKey", "hash_key", "issue_key", "parse_key"]
