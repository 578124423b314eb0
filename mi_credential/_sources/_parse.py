"""Reading token endpoint responses: JSON bodies, expiry times in the platforms' formats, refresh
times, the error shapes the platforms use, and the identity an access token's claims name. Pure:
the request time is passed in."""

from __future__ import annotations

import base64
import json
import math
import re
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

from .._constants import HALF_LIFE_THRESHOLD, REFRESH_BEFORE_EXPIRY
from .._errors import scrub
from .._models import RawResponse

#: What a token type may hold: an RFC 9110 token (``Bearer``, ``PoP``), nothing that could end a
#: header line.
_TOKEN_TYPE = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]{1,64}")


def decode_json_object(response: RawResponse) -> dict[str, Any] | None:
    """The body as a JSON object, or ``None`` if it is not one (empty, not JSON, not an object)."""
    if not response.body:
        return None
    try:
        value = json.loads(response.body.decode("utf-8-sig"))
    except (ValueError, RecursionError):  # UnicodeDecodeError included; nested too deeply
        return None
    return value if isinstance(value, dict) else None


def token_problem(token: object, token_type: object) -> str | None:
    """Why an ``access_token`` and ``token_type`` cannot be used, or ``None`` if they can: a
    token is printable ASCII with no spaces (it goes into an ``Authorization`` header as it is),
    a token type one word. The reason never quotes them."""
    if not isinstance(token, str) or not token.strip():
        return "it has no access_token"
    if not (token.isascii() and token.isprintable()) or " " in token:
        return "its access_token holds characters no token has (spaces, controls or non-ASCII)"
    if token_type is not None and not (
        isinstance(token_type, str) and (not token_type or _TOKEN_TYPE.fullmatch(token_type))
    ):
        return "its token_type is not a word"
    return None


def parse_epoch(value: object) -> int | None:
    """An absolute expiry as epoch seconds: an integer, a numeric string, or a date string in one
    of the formats the platforms send (``06/20/2019 02:57:58 +00:00``, ``1/16/2020 5:24:12 AM
    +00:00``, ISO 8601). ``None`` if it is none of those."""
    number = to_number(value)
    if number is not None:
        return int(number)
    if not isinstance(value, str):
        return None
    text = value.strip()
    for fmt in ("%m/%d/%Y %H:%M:%S %z", "%m/%d/%Y %I:%M:%S %p %z"):
        try:
            return int(datetime.strptime(text, fmt).timestamp())
        except ValueError:
            continue
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return int(parsed.timestamp())


def to_number(value: object) -> float | None:
    """A finite number from a JSON number or a numeric string; ``None`` otherwise."""
    if isinstance(value, bool):
        return None
    try:
        if isinstance(value, (int, float)):
            number = float(value)
        elif isinstance(value, str):
            number = float(value.strip())
        else:
            return None
    except (ValueError, OverflowError):  # an integer too large for a float overflows
        return None
    return number if math.isfinite(number) else None


def refresh_time(request_time: float, expires_on: int, refresh_in: object = None) -> int:
    """When to refresh proactively: the server's ``refresh_in`` when usable; else half-life for
    tokens of two hours or more; else five minutes before expiry (at most half the lifetime)."""
    lifetime = expires_on - request_time
    server_hint = to_number(refresh_in)
    if server_hint is not None and 0 < server_hint < lifetime:
        return int(request_time + server_hint)
    # Expiry times are whole seconds and the request time is not: a two-hour token asked for
    # at 12.7 s expires at 7212, 7199.3 s later, and is still a two-hour token.
    if math.ceil(lifetime) >= HALF_LIFE_THRESHOLD:
        return int(request_time + lifetime // 2)
    return int(expires_on - min(REFRESH_BEFORE_EXPIRY, lifetime // 2))


def describe_error(response: RawResponse, secrets: Sequence[str]) -> tuple[str | None, str | None]:
    """The endpoint's error code and description, from the shapes the platforms use:
    OAuth (``error``/``error_description``), App Service (``statusCode``/``message``) and OData
    (``error: {code, message}``). Scrubbed; nothing at all if the body carries a token."""
    payload = decode_json_object(response)
    if payload is None or "access_token" in payload:
        return None, None
    code: object = payload.get("error")
    description: object = payload.get("error_description") or payload.get("message")
    if isinstance(code, Mapping):
        description = code.get("message") or description
        code = code.get("code")
    code_text = scrub(str(code), secrets, limit=80) if code else None
    description_text = scrub(str(description), secrets) if description else None
    return code_text or None, description_text or None


MAX_CLAIMS_SEGMENT = 16 * 1024
"""The longest JWT payload segment that is decoded, in characters: access tokens are a few KB."""

_BASE64URL_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def decode_jwt_claims(token: str) -> dict[str, Any] | None:
    """The claims of a JWT access token (its payload segment: base64url-encoded JSON), without
    checking the signature. ``None``, never an exception, for anything else: an opaque or
    encrypted token, a payload segment over :data:`MAX_CLAIMS_SEGMENT` characters, bad base64
    or UTF-8, JSON that is not an object or is nested too deeply to decode."""
    parts = token.split(".", 3)
    if len(parts) != 3:
        return None
    segment = parts[1].rstrip("=")
    if not segment or len(segment) > MAX_CLAIMS_SEGMENT or segment.strip(_BASE64URL_ALPHABET):
        return None
    try:
        raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
        value = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError):  # binascii.Error and UnicodeDecodeError included
        return None
    return value if isinstance(value, dict) else None


#: The claims naming the identity a token was issued to, per kind of identifier (an
#: ``IdentityKind`` value), in order of preference: v1 tokens carry ``appid``, v2 tokens ``azp``.
_IDENTITY_CLAIMS = {
    "client_id": ("appid", "azp"),
    "object_id": ("oid",),
    "resource_id": ("xms_mirid",),
}


def token_identifier(token: str, kind: str) -> str | None:
    """The identifier of ``kind`` (``client_id``, ``object_id`` or ``resource_id``) that the
    claims of a JWT access token name: ``appid`` (else ``azp``), ``oid`` or ``xms_mirid``.
    ``None`` if the token is not a JWT (:func:`decode_jwt_claims`) or the claim is missing or
    not a non-empty string."""
    claims = decode_jwt_claims(token)
    if claims is None:
        return None
    for name in _IDENTITY_CLAIMS.get(kind, ()):
        value = claims.get(name)
        if isinstance(value, str) and value:
            return value
    return None
