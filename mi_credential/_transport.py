"""Send a :class:`TokenRequest` with aiohttp and return a :class:`RawResponse`.

The only module that sends with aiohttp (:mod:`._isolation` and :mod:`._body` are its parts).
Its session is created lazily inside the running event loop, is never shared with the
application's sessions, trusts no proxy environment variables, keeps no cookies, never follows
redirects (a redirect would carry the secret headers elsewhere), and runs no client middleware
of the application's (so an application's signing middleware cannot recurse into token
acquisition). A request through an application's session (``session=``) is kept as independent
of that session's settings (:mod:`._isolation`). A body is read within
:data:`MAX_RESPONSE_BYTES` decoded bytes (:mod:`._body`). aiohttp and timeout errors become
:class:`TransportError`, which the credential turns into its own typed errors; none references
aiohttp's exception, nor through it the request and its secret headers.
"""

from __future__ import annotations

import asyncio
import functools
import time
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from contextlib import asynccontextmanager, suppress
from typing import TYPE_CHECKING, Any
from urllib.parse import quote_plus

from ._body import read_body
from ._constants import MAX_RESPONSE_BYTES
from ._errors import scrub
from ._isolation import Isolation, failure
from ._isolation import TransportError as TransportError  # where the credential finds it
from ._models import RawResponse, TokenRequest

if TYPE_CHECKING:
    import ssl

    import aiohttp

# aiohttp is imported on first use, not with the package: it is most of the import cost, and a
# process whose tokens come from the cache never needs it.


@functools.lru_cache(maxsize=1)
def _sha1_fingerprint_class() -> type[aiohttp.Fingerprint]:
    import hashlib
    import hmac

    import aiohttp

    class Sha1Fingerprint(aiohttp.Fingerprint):
        """Pin a server certificate by its SHA-1 thumbprint.

        Service Fabric's token service presents a self-signed certificate identified only by the
        SHA-1 thumbprint in IDENTITY_SERVER_THUMBPRINT. aiohttp's :class:`~aiohttp.Fingerprint`
        refuses SHA-1 as a general-purpose pin; here the thumbprint is the platform's trust
        anchor, compared over the whole DER certificate before any request byte is sent.
        """

        def __init__(self, thumbprint: bytes) -> None:
            self._fingerprint = thumbprint
            self._hashfunc = hashlib.sha1

        def check(self, transport: asyncio.Transport) -> None:
            ssl_object = transport.get_extra_info("ssl_object")
            certificate = ssl_object.getpeercert(binary_form=True) if ssl_object else None
            got = hashlib.sha1(certificate or b"").digest()  # noqa: S324 - the platform's pin
            if not hmac.compare_digest(got, self._fingerprint):
                host, port, *_ = transport.get_extra_info("peername")
                raise aiohttp.ServerFingerprintMismatch(self._fingerprint, got, host, port)

    return Sha1Fingerprint


#: An idle pooled session is closed after this long: aiohttp drops idle keep-alive connections
#: after 15 s anyway, and tokens are acquired hours apart.
IDLE_CLOSE_SECONDS = 15.0


class _LoopSession:
    """The session every credential on one event loop sends with.

    Sharing it keeps a credential small (a session with its connector weighs more than all the
    rest of a credential with a cached token) and lets acquisitions that follow each other, from
    any credential, reuse a warm connection. It is closed when it has been idle for
    :data:`IDLE_CLOSE_SECONDS`, at once when a credential is closed while no request runs, and
    when its loop shuts down (``asyncio.run`` and ``asyncio.Runner`` end by closing the loop's
    asynchronous generators, :func:`_close_with_loop` among them), so a credential used from one
    loop after another leaves no session open behind it.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.session: aiohttp.ClientSession | None = None
        self.leases = 0
        self.idle_timer: asyncio.TimerHandle | None = None
        self.closing: asyncio.Task[None] | None = None
        self.watcher = _close_with_loop(self)
        with suppress(StopIteration):  # run it to its ``yield``: the loop tracks it
            self.watcher.__anext__().send(None)

    def acquire(self) -> aiohttp.ClientSession:
        self.leases += 1
        if self.idle_timer is not None:
            self.idle_timer.cancel()
            self.idle_timer = None
        if self.session is None or self.session.closed:
            import aiohttp

            self.session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=32),
                cookie_jar=aiohttp.DummyCookieJar(),
                trust_env=False,
                middlewares=(),
            )
        return self.session

    def release(self) -> None:
        self.leases -= 1
        if self.leases == 0 and self.session is not None:
            self.idle_timer = self.loop.call_later(IDLE_CLOSE_SECONDS, self._close_when_idle)

    def _close_when_idle(self) -> None:
        self.idle_timer = None
        if self.leases == 0 and self.session is not None:
            session, self.session = self.session, None
            self.closing = self.loop.create_task(session.close())

    async def close_if_idle(self) -> None:
        if self.leases == 0:
            await self._close_session()
        closing, self.closing = self.closing, None
        if closing is not None:
            await closing

    async def shutdown(self) -> None:
        """The loop is shutting down: forget this loop's entry and close its session."""
        if _loop_sessions.get(self.loop) is self:
            del _loop_sessions[self.loop]
        await self._close_session()
        closing, self.closing = self.closing, None
        if closing is not None and not closing.done():
            await closing

    async def _close_session(self) -> None:
        if self.idle_timer is not None:
            self.idle_timer.cancel()
            self.idle_timer = None
        session, self.session = self.session, None
        if session is not None and not session.closed:
            await session.close()


async def _close_with_loop(shared: _LoopSession) -> AsyncGenerator[None, None]:
    """Suspended at its ``yield`` for the life of the loop; the loop's shutdown
    (``loop.shutdown_asyncgens()``, which ``asyncio.run`` calls after cancelling the remaining
    tasks) closes it, and with it the loop's session."""
    try:
        yield
    finally:
        await shared.shutdown()


_loop_sessions: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopSession] = (
    weakref.WeakKeyDictionary()
)


def _loop_session() -> _LoopSession:
    loop = asyncio.get_running_loop()
    shared = _loop_sessions.get(loop)
    if shared is None:
        shared = _loop_sessions[loop] = _LoopSession(loop)
    return shared


def forget_loop_sessions() -> list[object]:
    """Forget every loop's session without closing it, and return what was forgotten.

    For a child process just forked: the sessions, their connections and their loops belong to
    the parent, and closing them would act on the parent's loops. The caller keeps what is
    returned referenced, so that no finalizer of an open session runs in the child either.
    """
    forgotten: list[object] = list(_loop_sessions.values())
    _loop_sessions.clear()
    return forgotten


class Transport:
    """Sends token requests. One per credential.

    Requests go through the session of the running event loop that all credentials share
    (:class:`_LoopSession`), or through the application's session if one was given. Nothing of
    a loop is kept here: each request finds its loop's session.

    Args:
        session: An application-provided session to send with; never closed here.
        connect_timeout: Seconds to establish a connection.
        read_timeout: Seconds to wait for each read from the socket.
        verify: ``True`` for the system trust store, or a path to a CA bundle (PEM).
    """

    __slots__ = (
        "_connect_timeout",
        "_injected",
        "_pins",
        "_read_timeout",
        "_ssl",
        "_verify",
    )

    def __init__(
        self,
        *,
        session: aiohttp.ClientSession | None = None,
        connect_timeout: float,
        read_timeout: float,
        verify: bool | str = True,
    ) -> None:
        self._injected = session
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._verify = verify
        self._ssl: ssl.SSLContext | bool | None = None
        self._pins: dict[str, aiohttp.Fingerprint] | None = None  # Service Fabric only

    @asynccontextmanager
    async def lease(self) -> AsyncIterator[None]:
        """Hold a session for the duration of the block (an acquisition and its retries)."""
        if self._injected is not None:
            yield
            return
        shared = _loop_session()
        shared.acquire()
        try:
            yield
        finally:
            shared.release()

    def _get_session(self) -> aiohttp.ClientSession:
        # The running loop's session, not one kept here: a transport holds nothing of a loop,
        # so a credential moves from one loop to the next (and into a forked child) as it is.
        if self._injected is not None:
            return self._injected
        shared = _loop_sessions.get(asyncio.get_running_loop())
        if shared is None or shared.session is None or not shared.leases:
            raise RuntimeError("Transport.send() outside lease()")
        return shared.session

    def _ssl_option(self) -> ssl.SSLContext | bool:
        if self._ssl is None:
            import ssl

            verify = self._verify
            self._ssl = (
                ssl.create_default_context(cafile=verify) if isinstance(verify, str) else verify
            )
        return self._ssl

    async def send(
        self, request: TokenRequest, *, timeout: float, connect_timeout: float | None = None
    ) -> RawResponse:
        """Send ``request``, read at most :data:`MAX_RESPONSE_BYTES` of the body (decoded).

        Args:
            request: What to send.
            timeout: Seconds this attempt may take in all (the rest of the deadline).
            connect_timeout: Seconds to establish the connection, if shorter than the
                transport's own.

        Raises:
            TransportError: No usable response.
        """
        entered = time.monotonic()
        import aiohttp  # the first time, this (and a TLS context) takes a while: see below
        from yarl import URL

        session = self._get_session()
        if session.closed:
            raise TransportError("the session given as session= is closed", retryable=False)
        headers = request.headers
        data: str | None = None
        if request.form is not None:
            data = "&".join(f"{quote_plus(k)}={quote_plus(v)}" for k, v in request.form)
            headers = (*headers, ("Content-Type", "application/x-www-form-urlencoded"))
        ssl_option: Any = self._ssl_option()
        if request.tls_thumbprint:
            pins = self._pins
            if pins is None:
                pins = self._pins = {}
            pin = pins.get(request.tls_thumbprint)
            if pin is None:
                pin = pins[request.tls_thumbprint] = _sha1_fingerprint_class()(
                    bytes.fromhex(request.tls_thumbprint)
                )
            ssl_option = pin
        if connect_timeout is None or connect_timeout > self._connect_timeout:
            connect_timeout = self._connect_timeout
        client_timeout = aiohttp.ClientTimeout(
            total=max(timeout - (time.monotonic() - entered), 0.001),
            sock_connect=connect_timeout,
            sock_read=self._read_timeout,
        )
        # Every setting of the session that would change the exchange is set for the request.
        isolation = Isolation(headers, session.headers if session is self._injected else ())
        try:
            async with session.request(
                request.method,
                URL(request.url, encoded=True),
                data=data,
                allow_redirects=False,
                ssl=ssl_option,
                timeout=client_timeout,
                middlewares=(isolation,),
                raise_for_status=False,
                auto_decompress=False,
                read_until_eof=True,
                **_RESPONSE_LIMITS,
            ) as response:
                body = await read_body(response, MAX_RESPONSE_BYTES)
                return RawResponse(
                    status=response.status,
                    reason=scrub(response.reason or "", request.secrets, limit=80),
                    headers=_quotable_headers(response.headers, request.secrets),
                    body=body.data,
                    truncated=body.too_large,
                )
        except Exception as exc:  # whatever it is, the credential raises its own typed error
            error = failure(exc, request.secrets)
        raise error  # outside the handler: no __context__ leads back to aiohttp's exception

    async def close(self) -> None:
        """Close the shared session of the running loop if no request is running on it."""
        if self._injected is None:
            shared = _loop_sessions.get(asyncio.get_running_loop())
            if shared is not None:
                await shared.close_if_idle()


#: aiohttp's defaults, set per request so that a session's own cannot loosen them.
_RESPONSE_LIMITS: dict[str, Any] = {
    "read_bufsize": 2**16,
    "max_line_size": 8190,
    "max_field_size": 8190,
    "max_headers": 128,
}


def _quotable_headers(headers: Mapping[str, str], secrets: tuple[str, ...]) -> Mapping[str, str]:
    """``headers`` (aiohttp's case-insensitive, immutable mapping) as they are, unless the one
    that messages quote, ``Content-Type``, holds a secret or JWT-shaped text: then a copy with
    it scrubbed, like the reason phrase and the body are (names lower-cased, first value kept)."""
    content_type = headers.get("content-type")
    if content_type is None or scrub(content_type, secrets, limit=200) == content_type:
        return headers
    copy: dict[str, str] = {}
    for name, value in headers.items():
        copy.setdefault(name.lower(), value)
    copy["content-type"] = scrub(content_type, secrets, limit=200)
    return copy
