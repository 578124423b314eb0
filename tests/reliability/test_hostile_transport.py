"""Hostile transports: compression bombs, connections dropped on every attempt, an application
session whose settings would change the exchange, exceptions that would carry the identity
header, and servers that break HTTP itself (huge or endless headers, endless or trickling
bodies, wrong lengths, garbage, 1xx floods, TLS oddities). Each ends in a typed error (or the
token), within the deadline, with memory bounded, one connection per reported attempt, and no
secret reachable from what is raised.

The servers are raw asyncio servers on 127.0.0.1 that script every byte.
"""

from __future__ import annotations

import asyncio
import gc
import json
import socket
import ssl
import struct
import sys
import time
import tracemalloc
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import aiohttp
import pytest

from mi_credential import (
    CredentialUnavailableError,
    InvalidTokenResponseError,
    ManagedIdentityCredential,
    ManagedIdentityError,
    TokenRequestError,
)
from mi_credential._constants import MAX_RESPONSE_BYTES

from .._leaks import assert_no_secret, chain
from ..conftest import ALL_SOURCES, FakeClock
from .test_hostile_input import impostor_certificate

pytestmark = pytest.mark.reliability

SCOPE = "https://storage.azure.com/.default"
SECRET = "HOSTILE-TRANSPORT-CANARY-7d41"
TOKEN = "hostile-transport-token"
MIB = 1024 * 1024


def token_body(token: str = TOKEN) -> bytes:
    return json.dumps({"access_token": token, "expires_in": 3600}).encode()


def response(
    status: str = "200 OK", body: bytes = b"", headers: tuple[str, ...] = (), length: bool = True
) -> bytes:
    head = [f"HTTP/1.1 {status}", "Content-Type: application/json", *headers]
    if length:
        head.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def chunk(data: bytes) -> bytes:
    return b"%x\r\n" % len(data) + data + b"\r\n"


Behaviour = Callable[["RawEndpoint", asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class RawEndpoint:
    """An App Service-style endpoint that runs ``behaviour`` on each connection it accepts.

    Counts connections, keeps each request's head, and cancels what still runs when it stops.
    """

    def __init__(self, behaviour: Behaviour, *, tls: ssl.SSLContext | None = None) -> None:
        self.behaviour = behaviour
        self.tls = tls
        self.connections = 0
        self.heads: list[bytes] = []
        self.url = ""
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    async def __aenter__(self) -> RawEndpoint:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.tls)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"{'https' if self.tls else 'http'}://127.0.0.1:{port}/msi/token"
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    def environ(self) -> dict[str, str]:
        return {"IDENTITY_ENDPOINT": self.url, "IDENTITY_HEADER": SECRET}

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        try:
            await self.behaviour(self, reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        except asyncio.CancelledError:  # stopped: end as finished, or asyncio logs an error
            pass
        finally:
            self._tasks.discard(task)
            writer.transport.abort()

    async def read_head(self, reader: asyncio.StreamReader) -> bytes:
        head = await reader.readuntil(b"\r\n\r\n")
        self.heads.append(head)
        return head


def answer(*parts: bytes, close: bool = True) -> Behaviour:
    """Answer every request on the connection with ``parts``, then close (or keep it open)."""

    async def behaviour(
        endpoint: RawEndpoint, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        while True:
            await endpoint.read_head(reader)
            for part in parts:
                writer.write(part)
                await writer.drain()
            if close:
                return

    return behaviour


def header(head: bytes, name: str) -> str | None:
    for line in head.decode("latin-1").split("\r\n")[1:]:
        key, _, value = line.partition(":")
        if key.strip().lower() == name.lower():
            return value.strip()
    return None


@pytest.fixture
async def served() -> AsyncIterator[Callable[..., Awaitable[RawEndpoint]]]:
    """Start raw endpoints; all are stopped after the test."""
    endpoints: list[RawEndpoint] = []

    async def start(behaviour: Behaviour, **kwargs: Any) -> RawEndpoint:
        endpoint = await RawEndpoint(behaviour, **kwargs).__aenter__()
        endpoints.append(endpoint)
        return endpoint

    yield start
    for endpoint in endpoints:
        await endpoint.__aexit__(None, None, None)


@pytest.fixture
async def sessions() -> AsyncIterator[Callable[..., aiohttp.ClientSession]]:
    """Application sessions, closed after the test."""
    created: list[aiohttp.ClientSession] = []

    def make(**kwargs: Any) -> aiohttp.ClientSession:
        session = aiohttp.ClientSession(**kwargs)
        created.append(session)
        return session

    yield make
    for session in created:
        await session.close()


def credential_for(
    endpoint: RawEndpoint, clock: FakeClock | None = None, **kwargs: Any
) -> ManagedIdentityCredential:
    if clock is not None:
        kwargs.update(clock=clock, sleep=clock.sleep)
    return ManagedIdentityCredential(environ=endpoint.environ(), **kwargs)


# -- what an error reporter could take from an exception ------------------------------------------


def assert_nothing_leaks(error: BaseException, caplog: pytest.LogCaptureFixture) -> None:
    """``error`` is typed; nothing in its chain is aiohttp's, holds ``request_info`` or shows
    the secret in ``str``, ``repr`` or ``vars()``; no log record shows it either."""
    assert isinstance(error, ManagedIdentityError), repr(error)
    for link in chain(error):
        assert type(link).__module__.startswith("mi_credential"), repr(link)
        assert getattr(link, "request_info", None) is None
    assert_no_secret(error, [SECRET], caplog.records)


async def failure(credential: ManagedIdentityCredential) -> ManagedIdentityError:
    async with credential:
        with pytest.raises(ManagedIdentityError) as caught:
            await credential.get_token(SCOPE)
    return caught.value


# -- 1. compression bombs ------------------------------------------------------------------------

_WBITS = {"gzip": 31, "x-gzip": 31, "deflate": 15, "raw deflate": -15}


def compressed_zeros(coding: str, mib: int | None) -> Iterator[bytes]:
    """``mib`` MiB of zeros compressed (level 9, about 1000:1), or an endless stream if
    ``None``: after a full flush each further MiB compresses to the same block, so a bomb of
    any size takes no time to make."""
    wbits = _WBITS[coding]
    zeros = bytes(MIB)
    compressor = zlib.compressobj(9, zlib.DEFLATED, wbits)
    first = compressor.compress(zeros) + compressor.flush(zlib.Z_FULL_FLUSH)
    block = compressor.compress(zeros) + compressor.flush(zlib.Z_FULL_FLUSH)
    end = compressor.flush()
    yield first
    if mib is None:
        while True:
            yield block
    for _ in range(mib - 1):
        yield block
    check = zlib.crc32(b"") if wbits == 31 else zlib.adler32(b"")
    for _ in range(mib):
        check = zlib.crc32(zeros, check) if wbits == 31 else zlib.adler32(zeros, check)
    if wbits == 31:
        yield end[:-8] + struct.pack("<II", check, (mib * MIB) & 0xFFFFFFFF)
    elif wbits == 15:
        yield end[:-4] + struct.pack(">I", check)
    else:
        yield end


def bomb(coding: str, mib: int | None) -> Behaviour:
    """A 200 whose body, ``Content-Encoding: coding``, inflates to ``mib`` MiB (sent with its
    Content-Length) or without end (chunked, each chunk inflating to 64 MiB). Made at once, so
    that what the server holds is not measured with the client."""
    encoding = "deflate" if coding == "raw deflate" else coding
    headers = (f"Content-Encoding: {encoding}",)
    stream = compressed_zeros(coding, mib)
    if mib is None:
        first = next(stream)
        chunks = [chunk(first), chunk(b"".join(next(stream) for _ in range(64)))]
        start = response(headers=(*headers, "Transfer-Encoding: chunked"), length=False)
    else:
        start = response(body=b"".join(stream), headers=headers)

    async def behaviour(
        endpoint: RawEndpoint, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await endpoint.read_head(reader)
        writer.write(start)
        await writer.drain()
        if mib is None:
            writer.write(chunks[0])
            while True:
                writer.write(chunks[1])
                await writer.drain()

    return behaviour


@pytest.mark.parametrize("application_session", [False, True], ids=["own session", "app session"])
@pytest.mark.parametrize("mib", [200, None], ids=["200 MiB", "endless"])
@pytest.mark.parametrize("coding", list(_WBITS))
async def test_a_compression_bomb_is_refused_within_bounded_memory(
    served: Any, sessions: Any, clock: FakeClock, caplog: pytest.LogCaptureFixture,
    coding: str, mib: int | None, application_session: bool,
) -> None:
    endpoint = await served(bomb(coding, mib))
    # An application session decompresses by default: the credential's requests do not.
    session = sessions(auto_decompress=True) if application_session else None
    credential = credential_for(endpoint, clock, session=session)
    gc.collect()
    tracemalloc.start()
    try:
        started = time.monotonic()
        error = await failure(credential)
        elapsed = time.monotonic() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert isinstance(error, InvalidTokenResponseError)
    assert "larger than any token response" in str(error)
    assert error.attempts == 1 and endpoint.connections == 1
    assert peak < 4 * MIB, f"peak traced memory {peak / MIB:.1f} MiB"
    assert elapsed < 5  # refused as soon as the limit is passed, not after inflating it all
    assert header(endpoint.heads[0], "Accept-Encoding") == "identity"
    assert_nothing_leaks(error, caplog)


@pytest.mark.parametrize("coding", list(_WBITS))
async def test_a_compressed_token_response_within_the_limit_is_read(
    served: Any, clock: FakeClock, coding: str
) -> None:
    """A server that compresses although asked not to still works, up to the limit."""
    wbits = _WBITS[coding]
    compressor = zlib.compressobj(6, zlib.DEFLATED, wbits)
    payload = json.dumps(
        {"access_token": TOKEN, "expires_in": 3600, "pad": " " * (MAX_RESPONSE_BYTES - 100)}
    ).encode()
    assert len(payload) <= MAX_RESPONSE_BYTES
    body = compressor.compress(payload) + compressor.flush()
    encoding = "deflate" if coding == "raw deflate" else coding
    endpoint = await served(answer(response(body=body, headers=(f"Content-Encoding: {encoding}",))))
    async with credential_for(endpoint, clock) as credential:
        assert (await credential.get_token(SCOPE)).token == TOKEN


def gzip(data: bytes) -> bytes:
    compressor = zlib.compressobj(6, zlib.DEFLATED, 31)
    return compressor.compress(data) + compressor.flush()


@pytest.mark.parametrize("excess", [0, 1])
async def test_the_limit_applies_to_the_decoded_bytes(
    served: Any, clock: FakeClock, excess: int
) -> None:
    """A gzip body of a few KB that decodes to exactly the limit is read; one byte more is not."""
    prefix = json.dumps({"access_token": TOKEN, "expires_in": 3600})[:-1].encode() + b', "pad": "'
    payload = prefix + b" " * (MAX_RESPONSE_BYTES - len(prefix) - 2 + excess) + b'"}'
    assert len(payload) == MAX_RESPONSE_BYTES + excess
    body = gzip(payload)
    assert len(body) < 8192
    endpoint = await served(answer(response(body=body, headers=("Content-Encoding: gzip",))))
    async with credential_for(endpoint, clock) as credential:
        if excess:
            with pytest.raises(InvalidTokenResponseError, match="larger than any token response"):
                await credential.get_token(SCOPE)
        else:
            assert (await credential.get_token(SCOPE)).token == TOKEN


@pytest.mark.parametrize(
    ("encoding", "body"),
    [
        ("br", b"\x1b\x00\x00"),
        ("zstd", b"\x28\xb5\x2f\xfd"),
        ("compress", b"\x1f\x9d"),
        ("gzip, gzip", gzip(gzip(token_body()))),
        ("gzip", b"\x1f\x8b not gzip at all"),
        ("gzip", gzip(token_body())[:-12]),  # cut off
        ("gzip", gzip(token_body()) + b"trailing bytes"),
        ("deflate", b"\x78\x9c\xff\xff"),
    ],
    ids=["br", "zstd", "compress", "stacked", "corrupt", "truncated", "trailing", "bad deflate"],
)
async def test_a_body_that_cannot_be_decoded_is_no_token(
    served: Any, clock: FakeClock, caplog: pytest.LogCaptureFixture, encoding: str, body: bytes
) -> None:
    endpoint = await served(answer(response(body=body, headers=(f"Content-Encoding: {encoding}",))))
    error = await failure(credential_for(endpoint, clock))
    assert isinstance(error, InvalidTokenResponseError)
    assert error.attempts == 1
    assert_nothing_leaks(error, caplog)


# -- 8. one connection per reported attempt -----------------------------------------------------


async def drop(endpoint: RawEndpoint, reader: asyncio.StreamReader, writer: Any) -> None:
    await endpoint.read_head(reader)  # and close without a word


async def reset(endpoint: RawEndpoint, reader: asyncio.StreamReader, writer: Any) -> None:
    await endpoint.read_head(reader)
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST


async def reset_mid_body(endpoint: RawEndpoint, reader: asyncio.StreamReader, writer: Any) -> None:
    await endpoint.read_head(reader)
    writer.write(response(body=token_body())[:-10])
    await writer.drain()
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


@pytest.mark.parametrize("application_session", [False, True], ids=["own session", "app session"])
@pytest.mark.parametrize("behaviour", [drop, reset, reset_mid_body], ids=lambda b: b.__name__)
async def test_every_connection_is_a_reported_attempt(
    served: Any, sessions: Any, clock: FakeClock, caplog: pytest.LogCaptureFixture,
    behaviour: Behaviour, application_session: bool,
) -> None:
    endpoint = await served(behaviour)
    session = sessions() if application_session else None
    error = await failure(credential_for(endpoint, clock, session=session))
    assert isinstance(error, CredentialUnavailableError)
    assert error.attempts == 4
    assert endpoint.connections == error.attempts
    assert len(clock.sleeps) == error.attempts - 1  # every new connection came after a back-off
    assert_nothing_leaks(error, caplog)


async def test_a_kept_alive_connection_is_reused(served: Any, clock: FakeClock) -> None:
    """The control: one connection is enough for two acquisitions when the server keeps it."""
    endpoint = await served(answer(response(body=token_body()), close=False))
    async with credential_for(endpoint, clock) as credential:
        await credential.get_token(SCOPE)
        await credential.get_token("https://vault.azure.net/.default")
    assert endpoint.connections == 1 and len(endpoint.heads) == 2


async def test_a_response_smuggled_after_the_body_is_never_taken(
    served: Any, clock: FakeClock
) -> None:
    """Bytes past the Content-Length that look like a second response are not the answer to
    the next request: the connection is dropped, the next request gets a fresh one."""
    smuggled = response(body=token_body("SMUGGLED-TOKEN"))
    answers = iter([response(body=b"{}") + smuggled, response(body=token_body())])

    async def behaviour(endpoint: RawEndpoint, reader: Any, writer: Any) -> None:
        while True:
            await endpoint.read_head(reader)
            writer.write(next(answers))
            await writer.drain()

    endpoint = await served(behaviour)
    async with credential_for(endpoint, clock) as credential:
        with pytest.raises(InvalidTokenResponseError):
            await credential.get_token(SCOPE)
        assert (await credential.get_token(SCOPE)).token == TOKEN
    assert endpoint.connections == 2


# -- 9. an application's session changes nothing ------------------------------------------------


def forbidden() -> Behaviour:
    body = json.dumps({"error": "forbidden", "error_description": "not for you"}).encode()
    return answer(response("403 Forbidden", body))


async def refuse_everything(response: aiohttp.ClientResponse) -> None:
    raise aiohttp.ClientResponseError(response.request_info, (), status=response.status)


@pytest.mark.parametrize("raise_for_status", [True, refuse_everything], ids=["True", "callable"])
async def test_a_session_that_raises_for_status_changes_no_outcome(
    served: Any, sessions: Any, clock: FakeClock, caplog: pytest.LogCaptureFixture,
    raise_for_status: Any,
) -> None:
    endpoint = await served(forbidden())
    plain = await failure(credential_for(endpoint, clock))
    session = sessions(raise_for_status=raise_for_status)
    through = await failure(credential_for(endpoint, clock, session=session))
    assert isinstance(plain, TokenRequestError) and not isinstance(plain, CredentialUnavailableError)
    assert type(through) is type(plain)
    assert through.status_code == plain.status_code == 403
    assert through.error_code == "forbidden"
    assert through.attempts == plain.attempts == 1
    assert str(through) == str(plain)
    assert_nothing_leaks(through, caplog)


async def test_an_application_session_changes_nothing_that_is_sent(
    served: Any, sessions: Any, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    from yarl import URL

    proxy = await served(answer(response("502 Bad Gateway")))
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(name, proxy.url.removesuffix("/msi/token"))
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    endpoint = await served(
        answer(response(body=token_body(), headers=("Set-Cookie: planted=1; Path=/",)), close=False)
    )
    jar = aiohttp.CookieJar(unsafe=True)  # keeps and sends cookies of IP addresses
    jar.update_cookies({"app-cookie": "APP-COOKIE"}, URL(endpoint.url))
    intercepted: list[object] = []

    async def signing(
        request: aiohttp.ClientRequest, handler: Callable[..., Awaitable[aiohttp.ClientResponse]]
    ) -> aiohttp.ClientResponse:
        intercepted.append(request.url)  # an application's middleware would ask for a token
        return await handler(request)

    session = sessions(
        base_url="http://127.0.0.1:9/elsewhere/",
        headers={
            "Authorization": "Bearer APP-TOKEN", "X-App": "APP-DEFAULT", "Accept": "text/html",
            "Accept-Encoding": "gzip", "User-Agent": "app/1.0", "Host": "elsewhere.example",
            "Cookie": "header-cookie=APP-COOKIE", "Content-Type": "text/plain",
        },
        cookies={"default-cookie": "APP-COOKIE"},
        cookie_jar=jar,
        trust_env=True,
        middlewares=(signing,),
        raise_for_status=True,
        timeout=aiohttp.ClientTimeout(total=1e-6),
        read_bufsize=1,
        max_line_size=64 * MIB,
        max_field_size=64 * MIB,
        skip_auto_headers=("Accept-Encoding", "User-Agent", "Accept"),
    )
    async with credential_for(endpoint, clock, session=session) as credential:
        assert (await credential.get_token(SCOPE)).token == TOKEN
        assert (await credential.get_token("https://vault.azure.net/.default")).token == TOKEN
    assert proxy.connections == 0
    assert intercepted == []
    assert endpoint.connections == 1  # the session's pool still serves the credential
    port = URL(endpoint.url).port
    for head in endpoint.heads:
        assert head.startswith(b"GET /msi/token?api-version=")
        assert header(head, "Host") == f"127.0.0.1:{port}"
        assert header(head, "Accept") == "*/*"
        assert header(head, "Accept-Encoding") == "identity"
        assert (header(head, "User-Agent") or "").startswith("mi-credential/")
        assert header(head, "X-IDENTITY-HEADER") == SECRET
        assert b"APP-" not in head
        for name in ("Authorization", "Cookie", "X-App", "Content-Type", "Proxy-Authorization"):
            assert header(head, name) is None, name
    assert "planted" not in {cookie.key for cookie in jar}


@pytest.mark.parametrize("source", ALL_SOURCES, ids=lambda s: s.value)
async def test_every_source_through_an_application_session_with_defaults(
    emulator: Any, make_credential: Any, sessions: Any, source: Any
) -> None:
    """Every flow (Azure Arc's challenge, Service Fabric's pinned TLS, workload identity's
    form POST to Entra ID) works through a session with defaults of its own, none sent."""
    session = sessions(
        headers={"Authorization": "Bearer APP-TOKEN", "X-App": "APP", "Content-Type": "text/plain",
                 "Accept-Encoding": "br"},
        cookies={"app-cookie": "APP-COOKIE"},
        raise_for_status=True,
        timeout=aiohttp.ClientTimeout(total=1e-6),
    )
    credential = make_credential(source, session=session)
    assert (await credential.get_token(SCOPE)).token
    records = emulator.requests_for(source)
    assert records
    for record in records:
        assert "APP" not in repr(dict(record.headers))
        assert record.header("x-app") is None and record.header("cookie") is None
        assert record.header("accept-encoding") == "identity"
        expected_type = "application/x-www-form-urlencoded" if record.form is not None else None
        assert record.header("content-type") == expected_type


async def test_a_closed_application_session_is_a_typed_error(
    served: Any, sessions: Any, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    endpoint = await served(answer(response(body=token_body())))
    session = sessions()
    await session.close()
    error = await failure(credential_for(endpoint, clock, session=session))
    assert isinstance(error, CredentialUnavailableError)
    assert "session= is closed" in str(error)
    assert error.attempts == 1 and endpoint.connections == 0
    assert_nothing_leaks(error, caplog)


async def test_netrc_credentials_of_a_trust_env_session_reach_no_token_endpoint(
    emulator: Any, make_credential: Any, sessions: Any, monkeypatch: pytest.MonkeyPatch,
    tmp_path: Any,
) -> None:
    """An application's ``.netrc`` entry for the endpoint's host is not sent, and does not
    clash with Azure Arc's own Authorization header either."""
    from mi_credential import ManagedIdentitySource as S

    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login app password APP-NETRC-PASSWORD\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    credential = make_credential(S.AZURE_ARC, session=sessions(trust_env=True))
    await credential.get_token(SCOPE)
    challenge, answered = emulator.requests_for(S.AZURE_ARC)[-2:]
    assert challenge.header("authorization") is None
    assert (answered.header("authorization") or "").startswith("Basic ")
    assert "APP-NETRC" not in repr(answered.headers)


# -- 7. nothing raised leads back to the request's headers ---------------------------------------


async def silent(endpoint: RawEndpoint, reader: asyncio.StreamReader, writer: Any) -> None:
    await endpoint.read_head(reader)
    await asyncio.Event().wait()  # until the endpoint stops


def echoing(template: bytes) -> Behaviour:
    """Answer with ``template``, the identity header received put in place of ``{}``."""

    async def behaviour(endpoint: RawEndpoint, reader: asyncio.StreamReader, writer: Any) -> None:
        head = await endpoint.read_head(reader)
        echoed = (header(head, "X-IDENTITY-HEADER") or "").encode()
        writer.write(template.replace(b"{}", echoed))
        await writer.drain()

    return behaviour


LEAKS: dict[str, tuple[Behaviour, dict[str, Any], type[ManagedIdentityError]]] = {
    "connection reset": (reset, {}, CredentialUnavailableError),
    "connection dropped": (drop, {}, CredentialUnavailableError),
    "read timeout": (silent, {"read_timeout": 0.05}, CredentialUnavailableError),
    "a status line echoing the secret": (echoing(b"{}\r\n\r\n"), {}, CredentialUnavailableError),
    "an invalid header echoing it": (
        echoing(b"HTTP/1.1 200 OK\r\nX-Echo: {}\x00\r\nContent-Length: 0\r\n\r\n"), {},
        CredentialUnavailableError,
    ),
    "a Content-Length echoing it": (
        echoing(b"HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n"), {}, CredentialUnavailableError,
    ),
    "a chunk size echoing it": (
        echoing(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{}\r\n"), {},
        CredentialUnavailableError,
    ),
    "a reason phrase echoing it": (
        echoing(b"HTTP/1.1 403 Forbidden {}\r\nContent-Length: 0\r\n\r\n"), {}, TokenRequestError,
    ),
    "403 through a raise_for_status session": (forbidden(), {"raising": True}, TokenRequestError),
    "reset through a raise_for_status session": (
        reset, {"raising": True}, CredentialUnavailableError,
    ),
}


@pytest.mark.parametrize("case", list(LEAKS))
async def test_nothing_raised_leads_back_to_the_secret(
    served: Any, sessions: Any, clock: FakeClock, caplog: pytest.LogCaptureFixture, case: str
) -> None:
    behaviour, options, expected = LEAKS[case]
    options = dict(options)
    if options.pop("raising", False):
        options["session"] = sessions(raise_for_status=True)
    endpoint = await served(behaviour)
    error = await failure(credential_for(endpoint, clock, **options))
    assert type(error) is expected or isinstance(error, expected)
    assert_nothing_leaks(error, caplog)


async def test_a_connect_timeout_leads_back_to_nothing(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    from mi_credential.emulator import hanging_port

    with hanging_port() as port:
        environ = {"IDENTITY_ENDPOINT": f"http://127.0.0.1:{port}/msi", "IDENTITY_HEADER": SECRET}
        error = await failure(ManagedIdentityCredential(
            environ=environ, clock=clock, sleep=clock.sleep, connection_timeout=0.05
        ))
    assert isinstance(error, CredentialUnavailableError) and "timed out connecting" in str(error)
    assert_nothing_leaks(error, caplog)


# -- TLS ------------------------------------------------------------------------------------------


@pytest.fixture
def tls(tmp_path: Any) -> tuple[str, ssl.SSLContext]:
    """A CA file a credential trusts, and a server context with a certificate it signed for
    127.0.0.1."""
    from mi_credential.emulator import _crypto

    material = _crypto.tls_material()
    paths = {}
    for name, pem in (("ca", material.ca_pem), ("cert", material.cert_pem),
                      ("key", material.key_pem)):
        paths[name] = tmp_path / f"{name}.pem"
        paths[name].write_bytes(pem)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(paths["cert"], paths["key"])
    return str(paths["ca"]), context


def untrusted_context(directory: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*impostor_certificate(directory))
    return context


async def tls_then_close(endpoint: RawEndpoint, reader: asyncio.StreamReader, writer: Any) -> None:
    await endpoint.read_head(reader)


async def tls_garbage(endpoint: RawEndpoint, reader: asyncio.StreamReader, writer: Any) -> None:
    await endpoint.read_head(reader)
    writer.write(b"\x16\x03\x01 not http at all\r\n\r\n")
    await writer.drain()


async def tls_cut_mid_body(endpoint: RawEndpoint, reader: Any, writer: Any) -> None:
    await endpoint.read_head(reader)
    writer.write(response(body=token_body())[:-5])
    await writer.drain()


async def no_handshake(endpoint: RawEndpoint, reader: asyncio.StreamReader, writer: Any) -> None:
    await asyncio.Event().wait()  # accepts, never answers the ClientHello


async def plain_http(endpoint: RawEndpoint, reader: asyncio.StreamReader, writer: Any) -> None:
    writer.write(response("400 Bad Request"))
    await writer.drain()


TLS_CASES = {
    "an untrusted certificate": ("untrusted", tls_then_close, "not trusted", 1),
    "plain http on an https URL": ("plain", plain_http, "TLS failed", 1),
    "no handshake": ("plain", no_handshake, "timed out connecting", 4),
    "closed after the handshake": ("trusted", tls_then_close, "closed the connection", 4),
    "garbage after the handshake": ("trusted", tls_garbage, "not valid HTTP", 4),
    "cut off mid-body": ("trusted", tls_cut_mid_body, "cut off", 4),
}


#: On Python 3.10, asyncio's SSL transport warns "unclosed transport" when it is collected after
#: the server closed the connection: aiohttp drops it once the connection is lost, and 3.10 does
#: not mark it closed (its socket is; the sslproto of 3.11 and later does not warn).
PY310_SSL_TRANSPORT_WARNING = (
    [pytest.mark.filterwarnings(
        "ignore:Exception ignored in. <function _SSLProtocolTransport.__del__"
        ":pytest.PytestUnraisableExceptionWarning"
    )]
    if sys.version_info < (3, 11)
    else []
)


@pytest.mark.parametrize(
    "case", [pytest.param(case, marks=PY310_SSL_TRANSPORT_WARNING) for case in TLS_CASES]
)
async def test_tls_oddities(
    served: Any, clock: FakeClock, caplog: pytest.LogCaptureFixture, tls: Any, tmp_path: Any,
    case: str,
) -> None:
    kind, behaviour, message, attempts = TLS_CASES[case]
    ca_file, trusted = tls
    context = {"untrusted": untrusted_context(str(tmp_path)), "trusted": trusted, "plain": None}
    endpoint = await served(behaviour, tls=context[kind])
    if kind == "plain":
        endpoint.url = endpoint.url.replace("http://", "https://")
    credential = credential_for(
        endpoint, clock, connection_verify=ca_file, connection_timeout=0.1, read_timeout=0.5
    )
    started = time.monotonic()
    error = await failure(credential)
    assert time.monotonic() - started < 5
    assert isinstance(error, CredentialUnavailableError)
    assert message in str(error)
    # What to check: the certificate or the port, never whether the endpoint is there at all.
    assert ("reachable" in str(error)) is (message not in ("not trusted", "TLS failed"))
    assert error.attempts == attempts
    if kind != "untrusted":  # a handshake refused by the client never reaches the handler
        assert endpoint.connections == attempts
    assert_nothing_leaks(error, caplog)


async def test_a_trusted_tls_endpoint_works(served: Any, clock: FakeClock, tls: Any) -> None:
    """The control for the cases above."""
    ca_file, context = tls
    endpoint = await served(answer(response(body=token_body())), tls=context)
    async with credential_for(endpoint, clock, connection_verify=ca_file) as credential:
        assert (await credential.get_token(SCOPE)).token == TOKEN


# -- servers that break HTTP ----------------------------------------------------------------------


def endless(prefix: bytes, piece: bytes, *, pace: float = 0.0) -> Behaviour:
    """Answer with ``prefix``, then ``piece`` again and again, every ``pace`` seconds (the
    server's own rhythm: a trickle) or as fast as the client reads."""

    async def behaviour(endpoint: RawEndpoint, reader: asyncio.StreamReader, writer: Any) -> None:
        await endpoint.read_head(reader)
        writer.write(prefix)
        while True:
            writer.write(piece)
            await writer.drain()
            if pace:
                await asyncio.sleep(pace)

    return behaviour


CHUNKED = ("Transfer-Encoding: chunked",)
NOT_HTTP = (CredentialUnavailableError, "not valid HTTP")
CUT_OFF = (CredentialUnavailableError, "cut off")
#: A broken body is found while the headers are parsed, or later: either way, so it says.
BAD_BODY = (CredentialUnavailableError, "cut off|not valid HTTP")
TOO_LARGE = (InvalidTokenResponseError, "larger than any token response")
TIMED_OUT = (CredentialUnavailableError, "timed out")

#: What the server does, what the credential must raise (None: the token) and say, and whether
#: the case runs on the real clock (a timeout is what ends it).
HOSTILE: dict[str, tuple[Behaviour, tuple[type[Exception], str] | None, bool]] = {
    "a 100 KB header line": (
        answer(response(body=token_body(), headers=("X-Big: " + "a" * 100_000,))), NOT_HTTP, False,
    ),
    "10 000 headers": (
        answer(response(body=token_body(), headers=("X-Many: 1",) * 10_000)), NOT_HTTP, False,
    ),
    "an endless header section": (
        endless(b"HTTP/1.1 200 OK\r\n", b"X-More: yes\r\n" * 100), NOT_HTTP, False,
    ),
    "an endless chunked body": (
        endless(response(headers=CHUNKED, length=False), chunk(b" " * 65536)), TOO_LARGE, False,
    ),
    "an endless body read to EOF": (
        endless(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n", b" " * 65536),
        TOO_LARGE, False,
    ),
    "an endless error body": (
        endless(response("500 Internal Server Error", headers=CHUNKED, length=False),
                chunk(b"x" * 65536)),
        (TokenRequestError, "HTTP 500"), False,
    ),
    "a Content-Length longer than the body": (
        answer(response(body=token_body())[:-10]), CUT_OFF, False,
    ),
    "a Content-Length of 10**20": (
        answer(b"HTTP/1.1 200 OK\r\nContent-Length: 100000000000000000000\r\n\r\n{}"),
        NOT_HTTP, False,
    ),
    "a negative Content-Length": (
        answer(b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n{}"), NOT_HTTP, False,
    ),
    "Content-Length and chunked": (
        answer(response(body=chunk(token_body()) + b"0\r\n\r\n", headers=CHUNKED)), NOT_HTTP, False,
    ),
    "two Content-Lengths": (
        answer(response(body=token_body(), headers=("Content-Length: 2",))), NOT_HTTP, False,
    ),
    "an invalid chunk size": (
        answer(response(headers=CHUNKED, length=False) + b"zz\r\n{}\r\n0\r\n\r\n"), BAD_BODY, False,
    ),
    "a chunk longer than announced": (
        answer(response(headers=CHUNKED, length=False) + b"2\r\n" + token_body() + b"\r\n0\r\n\r\n"),
        BAD_BODY, False,
    ),
    "HTTP/0.9 garbage": (answer(b"<html>hello</html>\r\n\r\n"), NOT_HTTP, False),
    "binary garbage": (answer(bytes(range(256)) * 4), NOT_HTTP, False),
    "a NUL in a header": (
        answer(response(body=token_body(), headers=("X-Nul: a\x00b",))), NOT_HTTP, False,
    ),
    "101 Switching Protocols, then junk": (
        endless(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: Upgrade\r\n\r\n",
                b"junk" * 16384),
        (TokenRequestError, "HTTP 101"), False,
    ),
    "status 999": (answer(response("999 Whatever", b"{}")), (TokenRequestError, "HTTP 999"), False),
    "a status line without a reason": (answer(response("200", token_body())), None, False),
    "early hints before the token": (
        answer(b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" * 20
               + response(body=token_body())),
        None, False,
    ),
    "HTTP/1.0, the body read to EOF": (
        answer(b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n" + token_body()),
        None, False,
    ),
    "an endless 1xx flood": (
        endless(b"", b"HTTP/1.1 100 Continue\r\n\r\n" * 100), TIMED_OUT, True,
    ),
    "a trickling body": (
        endless(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n", b" ", pace=0.02),
        TIMED_OUT, True,
    ),
    "trickling headers": (endless(b"HTTP/1.1 200 OK\r\nX-Slow: ", b"x", pace=0.02), TIMED_OUT, True),
}

DEADLINE = 1.0  # real seconds, where the real clock runs


@pytest.mark.parametrize("case", list(HOSTILE))
async def test_a_server_that_breaks_http(
    served: Any, clock: FakeClock, caplog: pytest.LogCaptureFixture, case: str
) -> None:
    behaviour, outcome, real_clock = HOSTILE[case]
    endpoint = await served(behaviour)
    options: dict[str, Any] = {"read_timeout": 0.5}
    if real_clock:
        options["timeout"] = DEADLINE
    credential = credential_for(endpoint, None if real_clock else clock, **options)
    started = time.monotonic()
    if outcome is None:
        async with credential:
            assert (await credential.get_token(SCOPE)).token == TOKEN
        return
    error = await failure(credential)
    elapsed = time.monotonic() - started
    error_type, message = outcome
    assert isinstance(error, error_type), repr(error)
    assert any(part in str(error) for part in message.split("|")), str(error)
    assert elapsed < (DEADLINE + 1.5 if real_clock else 5.0)
    assert endpoint.connections == error.attempts
    assert_nothing_leaks(error, caplog)
