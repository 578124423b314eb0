"""A protected API on 127.0.0.1 that checks emulator-minted tokens, TLS for it, and a resolver
that sends the test host names to loopback (and nothing anywhere else)."""

from __future__ import annotations

import socket
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult

from mi_credential.emulator import Emulator
from mi_credential.emulator._crypto import tls_material

API_HOST = "api.contoso.test"
OTHER_HOST = "other.contoso.test"
BLOB_DOMAIN = "blob.contoso.test"
EVIL_HOST = "evil.test"
TEST_NAMES = (
    API_HOST,
    OTHER_HOST,
    BLOB_DOMAIN,
    f"*.{BLOB_DOMAIN}",
    EVIL_HOST,
    f"{API_HOST}.{EVIL_HOST}",
    "localhost",
)

API_SCOPE = "api://contoso-api/.default"
API_AUDIENCE = "api://contoso-api"
OTHER_SCOPE = "api://contoso-other/.default"
OTHER_AUDIENCE = "api://contoso-other"
STORAGE_SCOPE = "https://storage.azure.com/.default"
STORAGE_AUDIENCE = "https://storage.azure.com"


class LoopbackResolver(AbstractResolver):
    """Resolves the test names (``*.test`` and ``localhost``) to 127.0.0.1 and refuses every
    other name, so no request can leave the machine."""

    def __init__(self) -> None:
        self.lookups: list[str] = []

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.lookups.append(host)
        if not (host.endswith(".test") or host in ("localhost", "127.0.0.1")):
            raise OSError(f"{host} is not a test host name")
        return [
            ResolveResult(
                hostname=host,
                host="127.0.0.1",
                port=port,
                family=socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
        ]

    async def close(self) -> None:
        return None


@dataclass(frozen=True)
class Tls:
    server: ssl.SSLContext
    client: ssl.SSLContext


@pytest.fixture(scope="session")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Tls:
    """A CA and a server certificate for the test host names and 127.0.0.1."""
    material = tls_material(tuple(TEST_NAMES))
    directory: Path = tmp_path_factory.mktemp("tls")
    cert_file = directory / "server.pem"
    key_file = directory / "server.key"
    cert_file.write_bytes(material.cert_pem)
    key_file.write_bytes(material.key_pem)
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert_file, key_file)
    client = ssl.create_default_context(cadata=material.ca_pem.decode())
    return Tls(server=server, client=client)


@dataclass(frozen=True)
class Seen:
    """A request the protected API received."""

    method: str
    host: str
    port: int
    path: str
    authorization: str | None
    body: bytes

    @property
    def token(self) -> str | None:
        if self.authorization and self.authorization.startswith("Bearer "):
            return self.authorization[len("Bearer ") :]
        return None


class ProtectedApi:
    """An aiohttp.web server playing a protected API.

    ``/data`` requires a bearer token the emulator signed, for the audience configured for the
    requested host name (``audiences``), and answers with its claims; without one it answers
    401 with a Bearer challenge. ``challenges`` queues 401 answers (their ``WWW-Authenticate``
    values) given to the next requests even with a valid token. ``/open`` needs no token.
    ``/redirect?to=URL&status=307`` redirects. Every request is recorded in ``seen``.
    """

    def __init__(self, emulator: Emulator, audiences: dict[str, str]) -> None:
        self.emulator = emulator
        self.audiences = audiences
        self.challenges: list[str] = []
        self.seen: list[Seen] = []
        self.before_verify: Callable[[], None] | None = None
        self.port = 0
        self.scheme = ""
        self._runner: web.AppRunner | None = None

    def url(self, path: str = "/data", host: str = API_HOST) -> str:
        return f"{self.scheme}://{host}:{self.port}{path}"

    def origin(self, host: str = API_HOST) -> str:
        return f"{host}:{self.port}"

    async def start(self, ssl_context: ssl.SSLContext | None) -> ProtectedApi:
        app = web.Application()
        app.router.add_route("*", "/data", self._data)
        app.router.add_route("*", "/open", self._open)
        app.router.add_route("*", "/redirect", self._redirect)
        app.router.add_get("/ws", self._websocket)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=ssl_context)
        await site.start()
        server: Any = site._server
        self.port = server.sockets[0].getsockname()[1]
        self.scheme = "http" if ssl_context is None else "https"
        return self

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _record(self, request: web.Request) -> Seen:
        seen = Seen(
            method=request.method,
            host=request.url.host or "",
            port=self.port,
            path=request.path,
            authorization=request.headers.get("Authorization"),
            body=await request.read(),
        )
        self.seen.append(seen)
        return seen

    async def _data(self, request: web.Request) -> web.StreamResponse:
        seen = await self._record(request)
        audience = self.audiences.get(seen.host)
        if seen.token is None or audience is None:
            return _unauthorized('Bearer realm="contoso"')
        if self.before_verify is not None:
            self.before_verify()
        try:
            claims = self.emulator.verify(seen.token, audience=audience)
        except jwt.InvalidTokenError:
            return _unauthorized('Bearer realm="contoso", error="invalid_token"')
        if self.challenges:
            return _unauthorized(self.challenges.pop(0))
        return web.json_response(
            {"aud": claims["aud"], "uti": claims["uti"], "body": seen.body.decode()}
        )

    async def _open(self, request: web.Request) -> web.StreamResponse:
        await self._record(request)
        return web.json_response({"open": True})

    async def _redirect(self, request: web.Request) -> web.StreamResponse:
        await self._record(request)
        status = int(request.query.get("status", "307"))
        return web.Response(status=status, headers={"Location": request.query["to"]})

    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        """A WebSocket that greets with the audience of the token of its handshake."""
        seen = await self._record(request)
        audience = self.audiences.get(seen.host)
        if seen.token is None or audience is None:
            return _unauthorized('Bearer realm="contoso"')
        claims = self.emulator.verify(seen.token, audience=audience)
        socket = web.WebSocketResponse()
        await socket.prepare(request)
        await socket.send_str(claims["aud"])
        await socket.close()
        return socket

    def seen_at(self, host: str, path: str = "/data") -> list[Seen]:
        return [s for s in self.seen if s.host == host and s.path == path]


def _unauthorized(challenge: str) -> web.Response:
    return web.json_response(
        {"error": "unauthorized"}, status=401, headers={"WWW-Authenticate": challenge}
    )


DEFAULT_AUDIENCES = {
    API_HOST: API_AUDIENCE,
    OTHER_HOST: OTHER_AUDIENCE,
    "127.0.0.1": API_AUDIENCE,
    "localhost": API_AUDIENCE,
}


@pytest.fixture
async def start_api(emulator: Emulator) -> AsyncIterator[Callable[..., Any]]:
    """Start protected APIs (HTTPS with ``tls``, else plain HTTP); all closed after the test."""
    started: list[ProtectedApi] = []

    async def start(ssl_context: ssl.SSLContext | None = None) -> ProtectedApi:
        api = await ProtectedApi(emulator, dict(DEFAULT_AUDIENCES)).start(ssl_context)
        started.append(api)
        return api

    yield start
    for api in started:
        await api.close()


@pytest.fixture
async def api(start_api: Callable[..., Any], tls: Tls) -> ProtectedApi:
    """A protected API over HTTPS."""
    started: ProtectedApi = await start_api(tls.server)
    return started


@pytest.fixture
async def make_session(tls: Tls) -> AsyncIterator[Callable[..., aiohttp.ClientSession]]:
    """Client sessions that trust the test CA and resolve test names to loopback."""
    sessions: list[aiohttp.ClientSession] = []

    def make(*middlewares: Any, **kwargs: Any) -> aiohttp.ClientSession:
        kwargs.setdefault(
            "connector", aiohttp.TCPConnector(ssl=tls.client, resolver=LoopbackResolver())
        )
        session = aiohttp.ClientSession(middlewares=middlewares, **kwargs)
        sessions.append(session)
        return session

    yield make
    for session in sessions:
        await session.close()
