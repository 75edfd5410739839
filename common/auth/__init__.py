"""Church API keys: shown once, stored as a hash, found by prefix."""

from common.auth.api_keys import IssuedKey, hash_key, issue_key, parse_key

__all__ = ["IssuedKey", "hash_key", "issue_key", "parse_key"]
