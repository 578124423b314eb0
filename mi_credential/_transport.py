"""Send a :class:`TokenRequest` with aiohttp and return a :class:`RawResponse`.

The only module that imports aiohttp. Its session is created lazily inside the running event
loop, is never shared with the application's sessions, trusts no proxy environment variables,
keeps no cookies, never follows redirects (a redirect would carry the secret headers elsewhere),
and runs no client middleware (so an application's signing middleware cannot recurse into token
acquisition). aiohttp and timeout errors become :class:`TransportError`, which the credential
turns into its own typed errors.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ssl
from collections.abc import Mapping
from typing import TYPE_CHECKING
from urllib.parse import quote_plus

import aiohttp
from yarl import URL

from ._constants import MAX_RESPONSE_BYTES
from ._models import RawResponse, TokenRequest

if TYPE_CHECKING:
    from aiohttp.client_middlewares import ClientMiddlewareType


class TransportError(Exception):
    """The endpoint did not answer usefully. Internal: never escapes the credential.

    Attributes:
        description: What happened, safe to show (no secrets).
        retryable: Whether another attempt may succeed.
        timeout: Whether it was a timeout.
    """

    def __init__(self, description: str, *, retryable: bool, timeout: bool = False) -> None:
        super().__init__(description)
        self.description = description
        self.retryable = retryable
        self.timeout = timeout


class _Sha1Fingerprint(aiohttp.Fingerprint):
    """Pin a server certificate by its SHA-1 thumbprint.

    Service Fabric's token service presents a self-signed certificate identified only by the
    SHA-1 thumbprint in IDENTITY_SERVER_THUMBPRINT. aiohttp's :class:`~aiohttp.Fingerprint` refuses
    SHA-1 as a general-purpose pin; here the thumbprint is the platform's trust anchor, compared
    over the whole DER certificate before any request byte is sent.
    """

    def __init__(self, thumbprint_hex: str) -> None:
        self._fingerprint = bytes.fromhex(thumbprint_hex)
        self._hashfunc = hashlib.sha1

    def check(self, transport: asyncio.Transport) -> None:
        ssl_object = transport.get_extra_info("ssl_object")
        certificate = ssl_object.getpeercert(binary_form=True) if ssl_object else None
        got = hashlib.sha1(certificate or b"").digest()  # noqa: S324 - the platform's pin
        if not hmac.compare_digest(got, self._fingerprint):
            host, port, *_ = transport.get_extra_info("peername")
            raise aiohttp.ServerFingerprintMismatch(self._fingerprint, got, host, port)


_NO_MIDDLEWARES: tuple[ClientMiddlewareType, ...] = ()


class Transport:
    """Sends token requests. One per credential.

    Args:
        session: An application-provided session to send with; never closed here.
        connect_timeout: Seconds to establish a connection.
        read_timeout: Seconds to wait for each read from the socket.
        verify: ``True`` for the system trust store, or a path to a CA bundle (PEM).
    """

    def __init__(
        self,
        *,
        session: aiohttp.ClientSession | None = None,
        connect_timeout: float,
        read_timeout: float,
        verify: bool | str = True,
    ) -> None:
        self._session = session
        self._session_loop: asyncio.AbstractEventLoop | None = None
        self._owns_session = session is None
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._ssl: ssl.SSLContext | bool = (
            ssl.create_default_context(cafile=verify) if isinstance(verify, str) else verify
        )
        self._pins: dict[str, _Sha1Fingerprint] = {}

    def _get_session(self) -> aiohttp.ClientSession:
        session = self._session
        loop = asyncio.get_running_loop()
        if session is not None and not session.closed:
            if not self._owns_session or self._session_loop is loop:
                return session
            # Created in another event loop, now gone: its connections died with it.
            session.detach()
        self._session_loop = loop
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=10, ssl=self._ssl),
            cookie_jar=aiohttp.DummyCookieJar(),
            trust_env=False,
            middlewares=_NO_MIDDLEWARES,
        )
        self._session = session
        return session

    async def send(
        self, request: TokenRequest, *, timeout: float, headers: Mapping[str, str] | None = None
    ) -> RawResponse:
        """Send ``request``, read at most :data:`MAX_RESPONSE_BYTES` of the body.

        Args:
            request: What to send.
            timeout: Seconds this attempt may take in all (the rest of the deadline).
            headers: Extra headers that are not part of the request value (tracing context).

        Raises:
            TransportError: No usable response.
        """
        session = self._get_session()
        request_headers = dict(request.headers)
        if headers:
            request_headers.update(headers)
        data: str | None = None
        if request.form is not None:
            data = "&".join(f"{quote_plus(k)}={quote_plus(v)}" for k, v in request.form)
            request_headers["Content-Type"] = "application/x-www-form-urlencoded"
        ssl_option: aiohttp.Fingerprint | ssl.SSLContext | bool = self._ssl
        if request.tls_thumbprint:
            pin = self._pins.get(request.tls_thumbprint)
            if pin is None:
                pin = self._pins[request.tls_thumbprint] = _Sha1Fingerprint(request.tls_thumbprint)
            ssl_option = pin
        client_timeout = aiohttp.ClientTimeout(
            total=max(timeout, 0.001),
            sock_connect=self._connect_timeout,
            sock_read=self._read_timeout,
        )
        try:
            async with session.request(
                request.method,
                URL(request.url, encoded=True),
                headers=request_headers,
                data=data,
                allow_redirects=False,
                ssl=ssl_option,
                timeout=client_timeout,
                middlewares=_NO_MIDDLEWARES,
            ) as response:
                body, truncated = await _read_bounded(response)
                return RawResponse(
                    status=response.status,
                    reason=response.reason or "",
                    headers={k.lower(): v for k, v in response.headers.items()},
                    body=body,
                    truncated=truncated,
                )
        except aiohttp.ServerFingerprintMismatch:
            raise TransportError(
                "the server certificate does not match IDENTITY_SERVER_THUMBPRINT",
                retryable=False,
            ) from None
        except aiohttp.ClientConnectorCertificateError as exc:
            raise TransportError(
                f"the server certificate was not trusted: {exc.certificate_error}",
                retryable=False,
            ) from exc
        except aiohttp.ClientSSLError as exc:
            raise TransportError(f"TLS failed: {_reason(exc)}", retryable=False) from exc
        except aiohttp.ClientConnectorError as exc:
            raise TransportError(f"connection failed: {_reason(exc)}", retryable=True) from exc
        except (asyncio.TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise TransportError("timed out", retryable=True, timeout=True) from exc
        except aiohttp.ServerDisconnectedError as exc:
            raise TransportError(
                "the server closed the connection without answering", retryable=True
            ) from exc
        except aiohttp.ClientPayloadError as exc:
            raise TransportError("the response body was cut off", retryable=True) from exc
        except aiohttp.ClientError as exc:
            raise TransportError(f"{type(exc).__name__}: {_reason(exc)}", retryable=True) from exc
        except (ValueError, UnicodeError) as exc:
            raise TransportError(
                f"the request could not be sent: {type(exc).__name__}", retryable=False
            ) from exc

    async def close(self) -> None:
        """Close the session if this transport created it. Idempotent."""
        session, self._session = self._session, None
        if session is not None and self._owns_session and not session.closed:
            await session.close()


async def _read_bounded(response: aiohttp.ClientResponse) -> tuple[bytes, bool]:
    length = response.content_length
    if length is not None and length > MAX_RESPONSE_BYTES:
        response.close()
        return b"", True
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(64 * 1024):
        chunks.append(chunk)
        size += len(chunk)
        if size > MAX_RESPONSE_BYTES:
            response.close()
            return b"", True
    return b"".join(chunks), False


def _reason(exc: BaseException) -> str:
    """The OS-level reason of a connection error, without aiohttp's request details."""
    os_error = getattr(exc, "os_error", None)
    if isinstance(os_error, OSError) and os_error.strerror:
        return os_error.strerror
    return str(exc) or type(exc).__name__
