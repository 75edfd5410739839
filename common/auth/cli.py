"""``koinonia keys``: a church's API keys, for operators (who hold the database credentials).

    koinonia keys create --church ID [--name NAME]   prints the new key once; store it now
    koinonia keys list   --church ID                 prefixes, names, use and revocation; never a secret
    koinonia keys revoke KEY_ID                      stops it at once (drops the cached entry too)

Each create and revoke is in the church's audit trail with actor ``cli``.
"""

from __future__ import annotations

import argparse
import sys
from uuid import UUID

from common.cli_support import guarded
from common.cli_support import runtime as _runtime
from common.cli_support import say as _say

CLI_ACTOR = "cli"

_guarded = guarded("keys", "keys_command")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``keys`` and its subcommands to the ``koinonia`` command."""
    keys = subparsers.add_parser("keys", help="a church's API keys: create, list, revoke")
    sub = keys.add_subparsers(dest="keys_command", required=True)

    create = sub.add_parser("create", help="make a new API key for a church (printed once)")
    create.add_argument("--church", type=_uuid, required=True, metavar="ID", help="the church's id")
    create.add_argument("--name", default="default", help="what the key is for, e.g. 'office laptop' (default: default)")
    create.set_defaults(func=_guarded(cmd_create))

    listing = sub.add_parser("list", help="a church's keys (never the secret)")
    listing.add_argument("--church", type=_uuid, required=True, metavar="ID", help="the church's id")
    listing.set_defaults(func=_guarded(cmd_list))

    revoke = sub.add_parser("revoke", help="revoke a key by its id (see 'keys list')")
    revoke.add_argument("key_id", type=_uuid, metavar="KEY_ID", help="the key's id (not the key itself)")
    revoke.set_defaults(func=_guarded(cmd_revoke))


def cmd_create(args: argparse.Namespace) -> int:
    from common.auth import keys

    name = args.name.strip()
    if not name or len(name) > keys.max_name_length or any(ord(c) < 32 or ord(c) == 127 for c in name):
        _say(f"keys create: --name must be 1 to {keys.max_name_length} printable characters", sys.stderr)
        return 2
    rt = _runtime()
    created = keys.create_key(rt.pool, args.church, name=name, actor=CLI_ACTOR)
    _say(f"key {created.info.id} ({created.info.name}, prefix {created.info.prefix}) for church {args.church}")
    _say(f"API key (shown once, store it now): {created.key}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from common.auth import keys

    rt = _runtime()
    if not keys.church_exists(rt.pool, args.church):
        _say(f"keys list: no church {args.church}", sys.stderr)
        return 2
    found = keys.list_keys(rt.pool, args.church)
    if not found:
        _say("no keys (make one with: koinonia keys create --church ID)")
        return 0
    header = ("id", "prefix", "status", "created_at", "last_used_at", "name")
    table = [header] + [
        (k.id, k.prefix, "active" if k.active else f"revoked {k.revoked_at:%Y-%m-%d %H:%M}",
         k.created_at.isoformat(timespec="seconds"),
         k.last_used_at.isoformat(timespec="seconds") if k.last_used_at else "never", k.name)
        for k in found
    ]  # fmt: skip
    widths = [max(len(row[i]) for row in table) for i in range(len(header) - 1)]
    for row in table:
        _say("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)) + "  " + row[-1])
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    from common.auth import keys
    from common.auth.cache import invalidation_cache

    rt = _runtime()
    church = keys.church_of_key(rt.pool, args.key_id)
    if church is None:
        _say(f"keys revoke: no API key {args.key_id} (give the key's id from 'koinonia keys list', not the key)", sys.stderr)
        return 2
    result = keys.revoke_key(rt.pool, church, args.key_id, actor=CLI_ACTOR, cache=invalidation_cache(rt))
    _say(f"key {result.info.id} ({result.info.prefix}) " + ("revoked" if result.changed else "was already revoked"))
    if not result.cache_dropped:
        _say(f"keys revoke: Redis could not be reached; servers that cached this key may accept it for up to"
             f" {rt.settings.auth_cache_ttl_s} s more", sys.stderr)  # fmt: skip
    return 0


# -- helpers ------------------------------------------------------------------------------------------------------


def _uuid(value: str) -> str:
    try:
        return str(UUID(value))
    except ValueError:
        if value.startswith("kn_"):  # never echo a key back: terminals get copied into tickets
            raise argparse.ArgumentTypeError("that is an API key, not an id; use the id from 'koinonia keys list'") from None
        raise argparse.ArgumentTypeError(f"{value!r} is not an id") from None
