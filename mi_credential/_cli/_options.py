"""What the command line accepts: a parser whose errors are one line, options that may be given
once, and the checks of each kind of value. A value that fails one is a usage error (exit
code 2), named with the option before anything runs."""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from typing import Any, NoReturn
from urllib.parse import urlsplit

from .._constants import MAX_TOKEN_LIFETIME
from ..http import check_scope

EXIT_USAGE = 2

#: The most seconds a timeout or latency may be (what the credential accepts as a timeout).
MAX_SECONDS = 86400.0

#: How much of a value a message quotes.
_SHOWN_LENGTH = 80


class UsageError(Exception):
    """The command line asks for something that cannot be done: reported in one line, exit 2."""


def shown(value: str) -> str:
    """``value`` quoted for a one-line message (control characters escaped), cut short."""
    if len(value) > _SHOWN_LENGTH:
        value = value[: _SHOWN_LENGTH - 3] + "..."
    return repr(value)


def one_line(text: str) -> str:
    """``text`` with any line break or other control character escaped."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line on standard error, exit code 2:
    ``mi-credential token: error: ...`` (``--help`` shows the usage)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {one_line(message)} (see --help)\n")


class Once(argparse.Action):
    """Store an option's value, and refuse the option a second time (argparse would keep the
    last one silently). ``note`` says why it may be given once."""

    def __init__(self, *args: Any, note: str = "give it once", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.note = note

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        seen: set[str] = namespace.__dict__.setdefault("_given_once", set())
        if self.dest in seen:
            parser.error(f"{option_string} was given more than once: {self.note}")
        seen.add(self.dest)
        setattr(namespace, self.dest, values)


def _refuse(text: str) -> NoReturn:
    raise argparse.ArgumentTypeError(text)


def nonempty(value: str) -> str:
    """A non-empty value without control characters, such as a path."""
    if not value.strip():
        _refuse("must not be empty")
    if not value.isprintable():
        _refuse(f"must not contain control characters: {shown(value)}")
    return value


def identity_id(value: str) -> str:
    """An identity's client ID, object ID or resource ID: empty would mean system-assigned."""
    if not value.strip():
        _refuse(
            "must not be empty (an empty ID would silently mean the system-assigned identity; "
            "leave the option out for that)"
        )
    return nonempty(value)


def scope(value: str) -> str:
    """One scope, such as ``https://vault.azure.net/.default``."""
    if not value.strip():
        _refuse("must not be empty: one scope, such as https://management.azure.com/.default")
    if any(c.isspace() for c in value.strip()) or "," in value:
        _refuse(f"one scope per request, not several: {shown(value)}")
    try:
        check_scope(value)
    except ValueError:
        hint = "such as https://management.azure.com/.default"
        host = value.strip().strip("/")
        if "://" not in value and "." in host and "/" not in host:
            hint = f"did you mean https://{host}/.default?"
        _refuse(f"not a scope (a resource URI or an application ID): {shown(value)}; {hint}")
    return value


def http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        _refuse(f"not an http(s) URL: {shown(value)}")
    return value.rstrip("/")


def port(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        _refuse(f"not a port number: {shown(value)}")
    if not 0 <= number <= 65535:
        _refuse(f"port must be 0-65535, not {number}")
    return number


def _number(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        _refuse(f"not a number of seconds: {shown(value)}")
    if not math.isfinite(number):
        _refuse(f"not a number of seconds: {shown(value)}")
    return number


def seconds(value: str) -> float:
    """Zero or more seconds (``--hold``)."""
    number = _number(value)
    if number < 0:
        _refuse(f"must be 0 or more seconds, not {value}")
    return number


def timeout(value: str) -> float:
    """A timeout: more than 0 seconds, at most :data:`MAX_SECONDS`."""
    number = _number(value)
    if not 0 < number <= MAX_SECONDS:
        _refuse(f"must be more than 0 and at most {MAX_SECONDS:g} seconds, not {value}")
    return number


def latency(value: str) -> float:
    """Seconds added to each response: 0 to :data:`MAX_SECONDS`."""
    number = _number(value)
    if not 0 <= number <= MAX_SECONDS:
        _refuse(f"must be 0 to {MAX_SECONDS:g} seconds, not {value}")
    return number


def lifetime(value: str) -> int:
    """A token lifetime: whole seconds, 1 to :data:`MAX_TOKEN_LIFETIME` (clients cache a token
    no longer than that whatever it claims)."""
    try:
        number = int(value)
    except ValueError:
        _refuse(f"not a whole number of seconds: {shown(value)}")
    if not 1 <= number <= MAX_TOKEN_LIFETIME:
        _refuse(f"must be 1 to {MAX_TOKEN_LIFETIME} seconds (7 days), not {number}")
    return number


def fail(prog: str, message: str) -> int:
    """Report a usage error in one line; returns its exit code."""
    print(f"{prog}: error: {one_line(message)}", file=sys.stderr)
    return EXIT_USAGE
