"""Keep each token request independent of the session it is sent with, and each failure free of
what the request carried.

An application's session (``session=``) brings settings of its own that would change what is
sent and what comes of it. Per request, the transport overrides ``raise_for_status``,
automatic decompression, the header size limits and the timeouts, and replaces the session's
client middlewares (an application's signing middleware never sees, nor recurses into, token
acquisition) with :class:`Isolation`, which

* sends exactly the credential's headers: the session's default headers, cookies, default
  ``auth`` and ``.netrc`` credentials are removed (none may reach a token endpoint, and a
  session's ``Authorization`` default would clash with Azure Arc's);
* sends plain-http requests directly, never through a proxy (from ``proxy=`` or the
  environment): the proxy would read the secret header. https goes as the session says: a
  proxy only tunnels it;
* keeps cookies the endpoint sets out of the session's cookie jar;
* lets a connection failure through aiohttp's silent resend of idempotent requests, so that
  each attempt the credential counts, backs off from and reports is one connection.

aiohttp's exceptions reference the request, its headers (the identity secret among them)
included, through ``request_info``. :func:`failure` turns each into a :class:`TransportError`
whose cause stands in for the original: its type's name and its message, scrubbed, nothing else.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Iterable
from typing import TYPE_CHECKING

from ._errors import scrub

if TYPE_CHECKING:
    import aiohttp
    from aiohttp.client_middlewares import ClientHandlerType


class TransportError(Exception):
    """The endpoint did not answer usefully. Internal: never escapes the credential.

    Its ``__cause__``, if any, is a :class:`Cause`, never the exception aiohttp raised.

    Attributes:
        description: What happened, safe to show (no secrets).
        retryable: Whether another attempt may succeed.
        connect: The connection was never established (refused, unreachable, timed out): the
            endpoint may not exist at all.
        timed_out: The failure was a timeout.
        tls: The failure was TLS's (a certificate, a thumbprint, a handshake): something
            answered there, and the description says what to check.
    """

    def __init__(
        self,
        description: str,
        *,
        retryable: bool,
        connect: bool = False,
        timed_out: bool = False,
        tls: bool = False,
    ) -> None:
        super().__init__(description)
        self.description = description
        self.retryable = retryable
        self.connect = connect
        self.timed_out = timed_out
        self.tls = tls


class Cause(Exception):
    """Stands in for an exception a request failed with: a class of the same name, the message
    with secrets removed, and no reference to the request, the response or the connection."""


@functools.lru_cache(maxsize=64)
def _cause_class(name: str) -> type[Cause]:
    return type(name, (Cause,), {"__module__": __name__, "__qualname__": name})


class NotResent(Exception):
    """Carries a connection failure past aiohttp's resend (which catches only its own errors)."""

    def __init__(self, error: Exception) -> None:
        super().__init__(type(error).__name__)
        self.error = error


#: Headers a session may add that a token request gets from the credential, or not at all.
_REPLACED = ("Host", "Accept", "Accept-Encoding", "User-Agent", "Cookie", "Authorization")
#: Framing aiohttp derives from the body; never taken from a session's defaults either way.
_FRAMING = frozenset({"content-length", "transfer-encoding"})


class Isolation:
    """The one client middleware of a token request (see the module's description).

    Args:
        headers: The request's headers, all of them sent exactly so.
        session_defaults: The names of the session's default headers, removed.
    """

    __slots__ = ("_headers", "_remove")

    def __init__(self, headers: Iterable[tuple[str, str]], session_defaults: Iterable[str]) -> None:
        self._headers = (("Accept", "*/*"), ("Accept-Encoding", "identity"), *headers)
        defaults = {name for name in session_defaults if name.lower() not in _FRAMING}
        self._remove = (*_REPLACED, "Proxy-Authorization", *defaults)

    async def __call__(
        self, request: aiohttp.ClientRequest, handler: ClientHandlerType
    ) -> aiohttp.ClientResponse:
        from http.cookies import SimpleCookie

        import aiohttp

        headers = request.headers
        for name in self._remove:
            headers.popall(name, None)
        host = request.url.host_port_subcomponent
        if host:
            headers["Host"] = host
        for name, value in self._headers:
            headers[name] = value
        if not request.is_ssl():
            request.update_proxy(None, None, None)
        try:
            response = await handler(request)
        except (aiohttp.ClientOSError, aiohttp.ServerDisconnectedError) as exc:
            raise NotResent(exc) from None
        response.cookies = SimpleCookie()  # nothing for the session's cookie jar
        return response


def failure(exc: Exception, secrets: tuple[str, ...]) -> TransportError:
    """The :class:`TransportError` for ``exc``, with a :class:`Cause` standing in for it."""
    if isinstance(exc, NotResent):
        exc = exc.error
    error = _classify(exc, secrets)
    message = scrub(str(exc), secrets) or type(exc).__name__
    error.__cause__ = _cause_class(type(exc).__name__)(message)
    return error


#: How to trust an endpoint whose certificate a private CA signed (the emulator's does:
#: ``mi-credential emulate`` prints the ``SSL_CERT_FILE`` line).
_PRIVATE_CA = (
    "to trust a private CA (such as the emulator's), set SSL_CERT_FILE to its PEM file or pass "
    "its path as connection_verify="
)


def _classify(exc: Exception, secrets: tuple[str, ...]) -> TransportError:
    import aiohttp

    if isinstance(exc, aiohttp.ServerFingerprintMismatch):
        return TransportError(
            "the server certificate does not match IDENTITY_SERVER_THUMBPRINT",
            retryable=False,
            tls=True,
        )
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return TransportError(
            f"the server certificate was not trusted: {_said(exc.certificate_error, secrets)}; "
            f"{_PRIVATE_CA}",
            retryable=False,
            tls=True,
        )
    if isinstance(exc, aiohttp.ClientSSLError):
        return TransportError(
            f"TLS failed: {_reason(exc, secrets)}; check that the endpoint serves https at "
            f"that port, and {_PRIVATE_CA}",
            retryable=False,
            tls=True,
        )
    if isinstance(exc, aiohttp.ClientConnectorError):
        return TransportError(
            f"connection failed: {_reason(exc, secrets)}", retryable=True, connect=True
        )
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return TransportError("timed out connecting", retryable=True, connect=True, timed_out=True)
    if isinstance(exc, (asyncio.TimeoutError, aiohttp.ServerTimeoutError)):
        return TransportError("timed out", retryable=True, timed_out=True)
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return TransportError("the server closed the connection without answering", retryable=True)
    if isinstance(exc, aiohttp.ClientPayloadError):
        return TransportError("the response body was cut off or malformed", retryable=True)
    if isinstance(exc, aiohttp.ClientResponseError):  # what came back is not HTTP
        return TransportError(
            f"the response was not valid HTTP: {_said(exc.message, secrets)}", retryable=True
        )
    if isinstance(exc, ValueError):  # UnicodeError and aiohttp's InvalidURL included
        return TransportError(
            f"the request could not be sent: {type(exc).__name__}", retryable=False
        )
    if isinstance(exc, (aiohttp.ClientError, OSError)):
        return TransportError(f"{type(exc).__name__}: {_reason(exc, secrets)}", retryable=True)
    return TransportError(f"{type(exc).__name__}: {_reason(exc, secrets)}", retryable=False)


def _reason(exc: BaseException, secrets: tuple[str, ...]) -> str:
    """The OS-level reason of a connection error, without aiohttp's request details."""
    os_error = getattr(exc, "os_error", None)
    if isinstance(os_error, OSError) and os_error.strerror:
        return _said(os_error.strerror, secrets)
    return _said(exc, secrets) or type(exc).__name__


def _said(what: object, secrets: tuple[str, ...]) -> str:
    return scrub(str(what), secrets, limit=160)
