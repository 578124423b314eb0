"""Parsing ``WWW-Authenticate`` (RFC 9110 section 11.6.1) for the Bearer challenge (pure).

A response may carry several challenges, in one header or several, and a challenge's parameters
are comma-separated like the challenges themselves, so the grammar is read token by token: a
token followed by ``=`` and a value is a parameter of the current challenge; any other token
starts a new challenge.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_TOKEN68 = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
_QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"')
_QUOTED_PAIR = re.compile(r"\\(.)")
_SEPARATORS = " \t,"


@dataclass
class Challenge:
    """One authentication challenge: its scheme (lower case) and parameters (keys lower case)."""

    scheme: str
    params: dict[str, str] = field(default_factory=dict)


def parse_challenges(values: Iterable[str]) -> list[Challenge]:
    """Every challenge in the given ``WWW-Authenticate`` header values. Malformed parts are
    skipped rather than raised: the caller only needs to recognise a well-formed Bearer one."""
    challenges: list[Challenge] = []
    for value in values:
        _parse_one(value, challenges)
    return challenges


def _parse_one(value: str, challenges: list[Challenge]) -> None:
    current: Challenge | None = None
    pos, end = 0, len(value)
    while pos < end:
        while pos < end and value[pos] in _SEPARATORS:
            pos += 1
        token = _TOKEN.match(value, pos)
        if token is None:
            if pos < end:
                pos += 1  # not a token: skip the character
            continue
        after = _skip_spaces(value, token.end())
        if after < end and value[after] == "=":
            param_value, pos = _read_value(value, _skip_spaces(value, after + 1))
            if current is not None and param_value is not None:
                current.params.setdefault(token.group().lower(), param_value)
            continue
        current = Challenge(token.group().lower())
        challenges.append(current)
        pos = after
        # An opaque token68 credential ("Negotiate abc=="), followed by a separator or the end.
        token68 = _TOKEN68.match(value, pos)
        if token68 is not None:
            rest = _skip_spaces(value, token68.end())
            if rest >= end or value[rest] == ",":
                pos = rest


def _skip_spaces(value: str, pos: int) -> int:
    while pos < len(value) and value[pos] in " \t":
        pos += 1
    return pos


def _read_value(value: str, pos: int) -> tuple[str | None, int]:
    quoted = _QUOTED.match(value, pos)
    if quoted is not None:
        return _QUOTED_PAIR.sub(r"\1", quoted.group(1)), quoted.end()
    token = _TOKEN.match(value, pos)
    if token is not None:
        return token.group(), token.end()
    return None, pos


def bearer_challenge(values: Iterable[str]) -> Challenge | None:
    """The first Bearer challenge among the header values, if any."""
    for challenge in parse_challenges(values):
        if challenge.scheme == "bearer":
            return challenge
    return None


def decode_claims(encoded: str) -> str | None:
    """The claims of a claims challenge: base64 (URL-safe or standard, padding optional) of a
    JSON object, returned as the JSON text the credential expects. ``None`` if malformed."""
    text = encoded.strip()
    if not text:
        return None
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        claims = raw.decode("utf-8")
        parsed = json.loads(claims)
    except (binascii.Error, ValueError):  # UnicodeDecodeError and JSONDecodeError included
        return None
    return claims if isinstance(parsed, dict) else None
