"""What the integrations share, public and pure: no I/O, no event loop, no HTTP client.

- **Challenges.** :func:`parse_challenges` reads ``WWW-Authenticate`` header values
  (RFC 9110 section 11.6.1) into :class:`Challenge` values; :func:`bearer_challenge`,
  :func:`claims_challenge` and :func:`decode_claims` answer what a client needs from them.
- **Scopes.** :func:`check_scope` refuses what cannot be a scope, with the rules the credential
  applies.
- **Tokens.** :class:`TokenAdapter` gets a token from any azure-core async credential, through
  ``get_token_info`` when it has it, else ``get_token``.

>>> from mi_credential.http import parse_challenges
>>> parse_challenges('Basic realm=/var/opt/azcmagent/tokens/abc.key')
[Challenge(scheme='basic', params={'realm': '/var/opt/azcmagent/tokens/abc.key'}, token68=None)]
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

from azure.core.credentials import AccessToken, AccessTokenInfo, TokenRequestOptions
from azure.core.credentials_async import AsyncSupportsTokenInfo, AsyncTokenCredential

__all__ = [
    "Challenge",
    "TokenAdapter",
    "bearer_challenge",
    "check_scope",
    "claims_challenge",
    "decode_claims",
    "parse_challenges",
]

# -- challenges ---------------------------------------------------------------------------------

_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
#: One list element of a field value: anything but commas and quoted strings, and quoted strings
#: (which may hold commas). An unterminated quoted string runs to the end of the value.
_ELEMENT = re.compile(r'(?:[^",]|"(?:[^"\\]|\\.)*(?:"|\\?\Z))*', re.S)
#: ``name = value``: the value a quoted string, or a bare run of visible characters. Bare values
#: are wider than RFC 9110's ``token`` so that what servers send unquoted reads as meant:
#: base64 with its padding (``claims=eyJh...==``), Azure Arc's key file paths
#: (``realm=/var/opt/...``, ``realm=C:\ProgramData\...``).
_PARAM = re.compile(
    rf'(?P<name>{_TOKEN})[ \t]*=[ \t]*'
    r'(?:"(?P<quoted>(?:[^"\\]|\\.)*)"|(?P<bare>[^\x00-\x20\x7f",=][^\x00-\x20\x7f",]*))',
    re.S,
)
#: A scheme, alone or followed by a token68 or its first parameter.
_SCHEME = re.compile(rf"(?P<scheme>{_TOKEN})(?:[ \t]+(?P<rest>.*))?", re.S)
_TOKEN68 = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
_QUOTED_PAIR = re.compile(r"\\(.)", re.S)


@dataclass(frozen=True)
class Challenge:
    """One authentication challenge of a ``WWW-Authenticate`` header.

    Attributes:
        scheme: The authentication scheme, lower case (``bearer``, ``basic``...).
        params: The parameters, names lower case, quoted values unquoted. A name given twice
            keeps its first value.
        token68: The opaque credential of a challenge such as ``Negotiate abc==``, which then
            has no parameters; ``None`` otherwise.
    """

    scheme: str
    params: Mapping[str, str] = field(default_factory=dict, hash=False)
    token68: str | None = None


def parse_challenges(headers: str | Iterable[str] | None) -> list[Challenge]:
    """Every challenge in ``WWW-Authenticate`` header values (RFC 9110 section 11.6.1).

    A value may hold several challenges, and a response several values, read as one
    comma-separated list. Quoted strings may hold commas and backslash escapes; scheme and
    parameter names are case-insensitive. Malformed parts are skipped, never raised: an element
    that is neither a challenge nor a parameter, what follows a scheme when it is neither a
    token68 nor one parameter (an unterminated quoted string, a missing comma), and parameters
    that belong to no challenge: before the first, after a token68, or after a malformed part
    (they may belong to a challenge whose scheme was lost, so they are not guessed onto the
    previous one).

    Args:
        headers: One header value, or all of them (``response.headers.getall(...)``).
            ``None`` and items that are not strings count as no value.

    Returns:
        The challenges in order.
    """
    challenges: list[Challenge] = []
    params: dict[str, str] | None = None  # where parameters go; None where none may follow
    for value in _values(headers):
        for element in _elements(value):
            if not element:
                continue
            param = _PARAM.fullmatch(element)
            if param is not None:
                if params is not None:
                    _add_param(params, param)
                continue
            scheme = _SCHEME.fullmatch(element)
            if scheme is None:
                params = None  # malformed: what follows may not be this challenge's
                continue
            rest = scheme.group("rest")
            params = {}
            token68 = None
            if rest is not None:
                first = _PARAM.fullmatch(rest)
                if first is not None:
                    _add_param(params, first)
                elif _TOKEN68.fullmatch(rest):
                    token68 = rest
            challenges.append(Challenge(scheme.group("scheme").lower(), params, token68))
            if token68 is not None or (rest is not None and not params):
                params = None  # a token68 takes no parameters; after malformed text, no guess
    return challenges


def _values(headers: str | Iterable[str] | None) -> Iterable[str]:
    if headers is None:
        return ()
    if isinstance(headers, str):
        return (headers,)
    return (value for value in headers if isinstance(value, str))


def _elements(value: str) -> Iterator[str]:
    """The comma-separated elements of one field value, without surrounding whitespace."""
    pos, end = 0, len(value)
    while pos <= end:
        match = _ELEMENT.match(value, pos)
        assert match is not None  # it matches the empty string
        yield match.group().strip(" \t")
        pos = match.end() + 1  # past the comma that ended it


def _add_param(params: dict[str, str], match: re.Match[str]) -> None:
    quoted = match.group("quoted")
    value = match.group("bare") if quoted is None else _QUOTED_PAIR.sub(r"\1", quoted)
    params.setdefault(match.group("name").lower(), value)


def bearer_challenge(headers: str | Iterable[str] | None) -> Challenge | None:
    """The first ``Bearer`` challenge.

    Args:
        headers: ``WWW-Authenticate`` header values, as for :func:`parse_challenges`.

    Returns:
        The challenge, or ``None`` if there is no ``Bearer`` challenge.
    """
    for challenge in parse_challenges(headers):
        if challenge.scheme == "bearer":
            return challenge
    return None


def decode_claims(encoded: str) -> str | None:
    """The claims of a claims challenge, as the JSON text a credential takes as ``claims``.

    Args:
        encoded: The challenge's ``claims`` parameter: base64 (URL-safe or standard alphabet,
            padding optional) of a JSON object.

    Returns:
        The decoded JSON text, or ``None`` if it is not base64 of UTF-8 JSON text that is an
        object.
    """
    text = encoded.strip()
    if not text:
        return None
    try:
        claims = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode("utf-8")
        parsed = json.loads(claims)
    except (binascii.Error, ValueError, RecursionError):  # UnicodeDecodeError, JSONDecodeError
        return None
    return claims if isinstance(parsed, dict) else None


def claims_challenge(headers: str | Iterable[str] | None) -> str | None:
    """The claims a claims challenge (Continuous Access Evaluation, Conditional Access) asks for.

    A claims challenge is a ``Bearer`` challenge with ``error="insufficient_claims"`` and
    ``claims`` holding base64 of a JSON object
    (https://learn.microsoft.com/entra/identity-platform/claims-challenge).

    Args:
        headers: ``WWW-Authenticate`` header values, as for :func:`parse_challenges`.

    Returns:
        The decoded claims (JSON text) of the first ``Bearer`` challenge with
        ``error="insufficient_claims"``; ``None`` if there is none, or if its ``claims`` is
        missing or malformed (see :func:`decode_claims`).
    """
    for challenge in parse_challenges(headers):
        if challenge.scheme == "bearer" and challenge.params.get("error") == "insufficient_claims":
            return decode_claims(challenge.params.get("claims", ""))
    return None


# -- scopes -------------------------------------------------------------------------------------

#: Whitespace (several scopes in one string) or control characters (header/log injection).
_UNSAFE_IN_SCOPE = re.compile(r"[\s\x00-\x1f\x7f]")
#: A URI with a scheme (``https://vault.azure.net/.default``, ``api://app/.default``) or an
#: application ID (a GUID, optionally followed by ``/.default``).
_SCOPE_SHAPE = re.compile(
    r"^(?:[A-Za-z][A-Za-z0-9+.\-]*:.+|[0-9A-Fa-f]{8}(?:-[0-9A-Fa-f]{4}){3}-[0-9A-Fa-f]{12}(?:/.*)?)$"
)


def check_scope(scope: object) -> None:
    """Refuse what cannot be a scope, before anything is sent.

    Args:
        scope: One scope, such as ``https://vault.azure.net/.default``, ``api://app/.default``
            or an application ID.

    Raises:
        ValueError: Not a non-empty string, whitespace or control characters inside, or neither
            a URI nor an application ID.
    """
    if not isinstance(scope, str) or not scope.strip():
        raise ValueError("Each scope must be a non-empty string.")
    if _UNSAFE_IN_SCOPE.search(scope):
        raise ValueError(
            f"Invalid scope {scope!r}: a scope contains no whitespace or control characters "
            "(pass several scopes as separate arguments)."
        )
    if not _SCOPE_SHAPE.match(scope):
        raise ValueError(
            f"Invalid scope {scope!r}: expected a resource URI such as "
            "'https://management.azure.com/.default' or an application ID."
        )


# -- tokens -------------------------------------------------------------------------------------

_OPTION_KEYS = frozenset(TokenRequestOptions.__annotations__)


class TokenAdapter:
    """Tokens from any azure-core async credential: ``get_token_info`` when it has one (the
    ``AsyncSupportsTokenInfo`` protocol), else ``get_token`` (``AsyncTokenCredential``).

    The adapter keeps no token: every call goes to the credential, whose cache answers. Its
    :meth:`get_token_info` takes what ``AsyncSupportsTokenInfo.get_token_info`` takes, and
    keywords too, as azure-core's bearer token policy passes them.

    Args:
        credential: The credential. It is neither entered nor closed here.

    Raises:
        TypeError: ``credential`` has neither ``get_token_info`` nor ``get_token``.
    """

    __slots__ = ("_get_token", "_get_token_info", "credential")

    def __init__(self, credential: AsyncSupportsTokenInfo | AsyncTokenCredential) -> None:
        get_token_info = getattr(credential, "get_token_info", None)
        get_token = getattr(credential, "get_token", None)
        if not callable(get_token_info) and not callable(get_token):
            raise TypeError(
                "credential must be an azure-core async credential (with get_token_info or "
                f"get_token), not {type(credential).__name__}."
            )
        self.credential = credential
        """The credential tokens come from."""
        self._get_token_info: Callable[..., Awaitable[AccessTokenInfo]] | None = (
            get_token_info if callable(get_token_info) else None
        )
        self._get_token: Callable[..., Awaitable[AccessToken]] | None = (
            get_token if callable(get_token) else None
        )

    def __repr__(self) -> str:
        return f"TokenAdapter({type(self.credential).__name__})"

    def get_token_info(
        self,
        *scopes: str,
        claims: str | None = None,
        options: TokenRequestOptions | None = None,
        **kwargs: Any,
    ) -> Awaitable[AccessTokenInfo]:
        """A token for ``scopes`` from the credential: ``await adapter.get_token_info(...)``.

        Args:
            scopes: The scopes (``ManagedIdentityCredential`` takes exactly one).
            claims: Claims from a claims challenge (the credential bypasses its cache).
            options: azure-core token request options (``claims``, ``tenant_id``,
                ``enable_cae``).
            kwargs: More token request options as keywords, which win over ``options``. For a
                credential with only ``get_token``, every option and keyword is passed to it as
                a keyword; ``get_token_info`` takes the token request options only. Options
                whose value is ``None`` are not passed.

        Returns:
            An awaitable of the token with its expiry (and, from ``get_token_info``, its type
            and refresh time).

        Raises:
            azure.core.exceptions.ClientAuthenticationError: From the credential, when awaited:
                no token.
        """
        get_token_info = self._get_token_info
        if get_token_info is not None and not claims and not options and not kwargs:
            # The common path: the credential's own awaitable, with no frame of ours around it.
            return get_token_info(*scopes)
        given: dict[str, Any] = {**(options or {}), **kwargs}
        if claims:
            given["claims"] = claims
        chosen = {key: value for key, value in given.items() if value is not None}
        if get_token_info is None:
            return self._from_get_token(scopes, chosen)
        request = {key: value for key, value in chosen.items() if key in _OPTION_KEYS}
        if not request:
            return get_token_info(*scopes)
        return get_token_info(*scopes, options=cast(TokenRequestOptions, request))

    async def _from_get_token(
        self, scopes: tuple[str, ...], kwargs: dict[str, Any]
    ) -> AccessTokenInfo:
        assert self._get_token is not None
        token = await self._get_token(*scopes, **kwargs)
        return AccessTokenInfo(token.token, token.expires_on)
