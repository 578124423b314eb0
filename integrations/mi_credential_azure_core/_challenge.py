"""Reading ``WWW-Authenticate`` challenges (RFC 9110 section 11.6.1) for claims challenges.

A claims challenge (Continuous Access Evaluation, Conditional Access) is a 401 whose
``WWW-Authenticate`` header holds a ``Bearer`` challenge with ``error="insufficient_claims"`` and
the required claims, base64url-encoded, in ``claims``:

    WWW-Authenticate: Bearer realm="", authorization_uri="https://login.microsoftonline.com/...",
        error="insufficient_claims", claims="eyJhY2Nlc3NfdG9rZW4iOnsi..."

See https://learn.microsoft.com/entra/identity-platform/claims-challenge. Pure functions: no I/O.
"""

from __future__ import annotations

import base64
import binascii

_TOKEN_CHARS = frozenset(
    "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
)
_TOKEN68_CHARS = _TOKEN_CHARS | frozenset("/=")


def parse_challenges(header: str) -> list[tuple[str, dict[str, str]]]:
    """Split a ``WWW-Authenticate`` value into challenges.

    Args:
        header: The header value; several challenges may share it, separated by commas.

    Returns:
        ``(scheme, parameters)`` pairs in order; scheme and parameter names lower-cased, quoted
        values unquoted. A challenge with a token68 (``Basic abc==``) has no parameters.
        Malformed text ends the parse: what was read before it is returned.
    """
    challenges: list[tuple[str, dict[str, str]]] = []
    text = header
    pos = 0
    end = len(text)
    params: dict[str, str] | None = None
    while pos < end:
        pos = _skip(text, pos, " \t,")
        if pos >= end:
            break
        name_end = _token_end(text, pos)
        if name_end == pos:
            break
        name = text[pos:name_end]
        after = _skip(text, name_end, " \t")
        if after < end and text[after] == "=" and params is not None:
            # An auth-param of the current challenge: a quoted string or a bare token (which may
            # end in base64 padding).
            value_start = _skip(text, after + 1, " \t")
            if value_start < end and text[value_start] == '"':
                value, pos = _quoted(text, value_start)
                if value is None:
                    break
            else:
                value_end = _token68_end(text, value_start)
                value = text[value_start:value_end]
                pos = value_end
            params.setdefault(name.lower(), value)
            continue
        # A new challenge: the scheme, then either a token68 or auth-params.
        params = {}
        challenges.append((name.lower(), params))
        pos = after
        token68_end = _token68_end(text, pos)
        candidate = text[pos:token68_end]
        # ``Scheme abc==`` is a token68 when it runs to the end or to a comma and has no ``=``
        # but trailing padding; ``Scheme a=b`` starts auth-params instead.
        runs_to_separator = _skip(text, token68_end, " \t") in (end, _comma(text, pos))
        if candidate and runs_to_separator and "=" not in candidate.rstrip("="):
            pos = token68_end
            params = None  # a token68 challenge takes no auth-params
    return challenges


def claims_from_challenge(header: str | None) -> str | None:
    """The claims a claims challenge asks for, decoded; ``None`` if it is not one.

    Args:
        header: A ``WWW-Authenticate`` value, or ``None``.

    Returns:
        The decoded claims (a JSON text), if a ``Bearer`` challenge has
        ``error="insufficient_claims"`` and a non-empty ``claims`` that is valid base64url of
        UTF-8 text; otherwise ``None``.
    """
    if not header:
        return None
    for scheme, params in parse_challenges(header):
        if scheme != "bearer" or params.get("error") != "insufficient_claims":
            continue
        encoded = params.get("claims", "").strip()
        if not encoded:
            return None
        try:
            decoded = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
            claims = decoded.decode("utf-8")
        except (binascii.Error, ValueError):
            return None
        return claims or None
    return None


def _skip(text: str, pos: int, chars: str) -> int:
    while pos < len(text) and text[pos] in chars:
        pos += 1
    return pos


def _token_end(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in _TOKEN_CHARS:
        pos += 1
    return pos


def _token68_end(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in _TOKEN68_CHARS:
        pos += 1
    return pos


def _comma(text: str, pos: int) -> int:
    index = text.find(",", pos)
    return len(text) if index < 0 else index


def _quoted(text: str, pos: int) -> tuple[str | None, int]:
    """The unescaped content of the quoted-string starting at ``pos`` and the index after it."""
    out: list[str] = []
    pos += 1
    while pos < len(text):
        char = text[pos]
        if char == "\\" and pos + 1 < len(text):
            out.append(text[pos + 1])
            pos += 2
        elif char == '"':
            return "".join(out), pos + 1
        else:
            out.append(char)
            pos += 1
    return None, pos
