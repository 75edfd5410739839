"""What the ``koinonia`` subcommands share: printing, confirmation, argument types, refusals as one line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, TextIO
from uuid import UUID

from common.api_errors import ApiError

if TYPE_CHECKING:
    from common.runtime import Runtime

Command = Callable[[argparse.Namespace], int]


def say(line: str, stream: TextIO | None = None) -> None:
    print(line, file=stream if stream is not None else sys.stdout, flush=True)


def runtime() -> Runtime:
    from common.config import load_settings
    from common.runtime import get_runtime

    load_settings()  # a bad configuration raises ConfigurationError: `koinonia` prints one line, exit 2
    return get_runtime()


def guarded(group: str, subcommand_attr: str) -> Callable[[Command], Command]:
    """A refused request (unknown church, bad cursor, last key...) is one line and exit code 2, not a traceback."""

    def wrap(command: Command) -> Command:
        def run(args: argparse.Namespace) -> int:
            try:
                return command(args)
            except ApiError as exc:
                say(f"{group} {getattr(args, subcommand_attr)}: {exc.message}", sys.stderr)
                return 2

        return run

    return wrap


def confirm(prompt: str) -> bool:
    """Yes only from a person at a terminal; anything else (a pipe, a script, EOF) is no."""
    if not sys.stdin.isatty():
        return False
    try:
        return input(prompt).strip().lower() in ("y", "yes")
    except EOFError:
        return False


def uuid_arg(value: str) -> str:
    try:
        return str(UUID(value))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not an id") from None


def positive_int(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number of at least 1")
    return int(value)
