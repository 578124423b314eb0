"""The servers the demo runs on 127.0.0.1 besides the emulator: a protected API that checks
every bearer token it receives, and a FastAPI application that calls it with its managed
identity, served by uvicorn.

The demo traces calls between them itself, with the W3C ``traceparent`` header, so that one
request shows as one trace from the demo's client to the protected API.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any

import aiohttp
import jwt
import uvicorn
from aiohttp import web
from fastapi import FastAPI, HTTPException, Request
from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from mi_credential.emulator import Emulator
from mi_credential_aiohttp import create_session
from mi_credential_asgi import (
    ManagedIdentityMiddleware,
    add_credential_error_handler,
    add_readiness_route,
)

ORDERS_AUDIENCE = "api://orders-api"
ORDERS_SCOPE = f"{ORDERS_AUDIENCE}/.default"

PROPAGATOR = TraceContextTextMapPropagator()

#: Seconds any single call between the demo's parts may take.
CALL_TIMEOUT = 10.0


def client_ssl_context(ca_file: str) -> ssl.SSLContext:
    """A client context that trusts the emulator's CA (and nothing else)."""
    return ssl.create_default_context(cafile=ca_file)


def traced_headers() -> dict[str, str]:
    """``traceparent`` for the current span, to send with a request."""
    headers: dict[str, str] = {}
    PROPAGATOR.inject(headers)
    return headers


class OrdersApi:
    """A protected API over HTTPS: ``GET /orders`` answers only a request that carries a token
    the emulator signed for :data:`ORDERS_AUDIENCE` (signature, audience and lifetime checked),
    and 401 with a Bearer challenge otherwise.

    Attributes:
        url: ``https://127.0.0.1:<port>/orders`` once started.
        accepted: The ``appid`` claim of every caller it accepted, in order.
        refused: How many requests it refused.
    """

    def __init__(self, emulator: Emulator, tracer: Tracer) -> None:
        self._emulator = emulator
        self._tracer = tracer
        self._runner: web.AppRunner | None = None
        self.url = ""
        self.accepted: list[str] = []
        self.refused = 0

    async def start(self) -> OrdersApi:
        app = web.Application()
        app.router.add_get("/orders", self._orders)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        ssl_context = self._emulator.server_ssl_context()  # its clients trust the emulator's CA
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=ssl_context)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"https://127.0.0.1:{port}/orders"
        return self

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _orders(self, request: web.Request) -> web.Response:
        with self._tracer.start_as_current_span(
            "Orders API: GET /orders",
            context=PROPAGATOR.extract(dict(request.headers)),
            kind=SpanKind.SERVER,
        ) as span:
            scheme, _, token = request.headers.get("Authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not token:
                return self._refuse(span, 'Bearer realm="orders-api"', "no bearer token")
            try:
                claims = self._emulator.verify(token.strip(), audience=ORDERS_AUDIENCE)
            except jwt.InvalidTokenError as exc:
                # The exception's text describes the check that failed, never the token.
                return self._refuse(
                    span, 'Bearer realm="orders-api", error="invalid_token"', type(exc).__name__
                )
            self.accepted.append(str(claims.get("appid", "")))
            span.set_attribute("http.response.status_code", 200)
            return web.json_response(
                {
                    "orders": [{"id": 1, "item": "coffee"}, {"id": 2, "item": "tea"}],
                    "caller": {"appid": claims.get("appid"), "aud": claims.get("aud")},
                }
            )

    def _refuse(self, span: Any, challenge: str, reason: str) -> web.Response:
        self.refused += 1
        span.set_attribute("http.response.status_code", 401)
        span.set_status(Status(StatusCode.ERROR, reason))
        return web.json_response(
            {"error": "unauthorized", "reason": reason},
            status=401,
            headers={"WWW-Authenticate": challenge},
        )


def build_fastapi_app(
    *,
    orders_url: str,
    credential_options: Mapping[str, Any],
    ca_file: str,
    tracer: Tracer,
) -> FastAPI:
    """The application: ``GET /orders`` calls the Orders API with the app's managed identity.

    The middleware owns the credential (created and warmed at startup, closed at shutdown);
    the session that signs the calls to the Orders API is built from it on first use and
    closed at the application's shutdown, which runs before the credential is closed.
    """
    sessions: list[aiohttp.ClientSession] = []

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        for session in sessions:
            await session.close()
        sessions.clear()

    app = FastAPI(lifespan=lifespan)
    app.add_middleware(
        ManagedIdentityMiddleware,
        credential_options=dict(credential_options),
        warmup_scopes=[ORDERS_SCOPE],
        strict=True,
    )
    add_credential_error_handler(app)
    add_readiness_route(app)
    origin = orders_url.split("/orders")[0].removeprefix("https://")

    def orders_session(request: Request) -> aiohttp.ClientSession:
        if not sessions:
            sessions.append(
                create_session(
                    request.state.managed_identity.credential,
                    {origin: ORDERS_SCOPE},
                    connector=aiohttp.TCPConnector(ssl=client_ssl_context(ca_file)),
                    timeout=aiohttp.ClientTimeout(total=CALL_TIMEOUT),
                )
            )
        return sessions[0]

    @app.get("/orders")
    async def orders(request: Request) -> dict[str, Any]:
        with tracer.start_as_current_span(
            "FastAPI app: GET /orders",
            context=PROPAGATOR.extract(dict(request.headers)),
            kind=SpanKind.SERVER,
        ) as server_span:
            session = orders_session(request)
            with tracer.start_as_current_span(
                "GET /orders to the Orders API (aiohttp, signed)", kind=SpanKind.CLIENT
            ) as span:
                async with session.get(orders_url, headers=traced_headers()) as response:
                    span.set_attribute("http.response.status_code", response.status)
                    if response.status != 200:
                        server_span.set_attribute("http.response.status_code", 502)
                        raise HTTPException(502, f"The Orders API answered {response.status}.")
                    body: dict[str, Any] = await response.json()
            server_span.set_attribute("http.response.status_code", 200)
        return {"orders": len(body["orders"]), "caller": body["caller"]}

    return app


class _Server(uvicorn.Server):
    """uvicorn without its signal handlers: the demo owns the process's signals (Ctrl-C ends
    ``--hold``), whereas uvicorn would re-raise a captured signal once it has stopped."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@contextlib.asynccontextmanager
async def serve(app: FastAPI) -> AsyncIterator[str]:
    """Serve ``app`` with uvicorn on 127.0.0.1 (a free port), lifespan on; yields its URL.

    Raises:
        RuntimeError: The application failed to start (uvicorn has logged why).
    """
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=0,
        lifespan="on",
        log_config=None,
        log_level="warning",
        access_log=False,
    )
    server = _Server(config)
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if task.done():
                task.result()
                raise RuntimeError("The FastAPI application failed to start (see above).")
            await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, CALL_TIMEOUT)
