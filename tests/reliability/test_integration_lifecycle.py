"""Cancellation and shutdown through every integration: requests cancelled while their token is
being acquired, lifespans cut short. Nothing is left pending, nothing unclosed, and the shared
acquisition still serves the next caller."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from azure.core.pipeline import AsyncPipeline
from azure.core.pipeline.transport import AioHttpTransport
from azure.core.rest import HttpRequest

from mi_credential import ManagedIdentityCredential
from mi_credential import ManagedIdentitySource as S
from mi_credential.emulator import Emulator
from mi_credential_aiohttp import create_session
from mi_credential_asgi import ManagedIdentityMiddleware
from mi_credential_azure_core import BearerTokenPolicy

from ..conftest import FakeClock
from .test_cancellation import other_tasks, settle

pytestmark = pytest.mark.reliability

SCOPE = "https://storage.azure.com/.default"


@pytest.fixture
async def api() -> Any:
    """A plain-http API on loopback that counts the requests that reach it."""
    seen: list[str] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization", ""))
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_get("/", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"127.0.0.1:{port}", seen
    await runner.cleanup()


async def test_aiohttp_requests_cancelled_while_the_token_is_acquired(
    emulator: Emulator, clock: FakeClock, api: Any
) -> None:
    origin, seen = api
    credential = ManagedIdentityCredential(environ=emulator.environ(S.IMDS), clock=clock)
    async with create_session(credential, {origin: SCOPE}, allow_http=["127.0.0.1"]) as session:

        async def call() -> int:
            async with session.get(f"http://{origin}/") as response:
                return response.status

        with emulator.hold():  # the token is not answered while they are cancelled
            requests = [asyncio.ensure_future(call()) for _ in range(20)]
            await emulator.wait_for_requests(1)  # all are waiting for the token now
            for request in requests:
                request.cancel()
            await asyncio.gather(*requests, return_exceptions=True)
            assert all(r.cancelled() for r in requests)
            assert seen == []  # nothing was sent unsigned or half-signed
        assert await call() == 200  # the shared acquisition went on
    assert len(emulator.requests) == 1
    await credential.close()
    await settle()
    assert other_tasks() == set()


async def test_azure_core_request_cancelled_while_the_token_is_acquired(
    emulator: Emulator, clock: FakeClock, api: Any
) -> None:
    origin, seen = api
    credential = ManagedIdentityCredential(environ=emulator.environ(S.IMDS), clock=clock)
    transport = AioHttpTransport(session=aiohttp.ClientSession(), session_owner=True)
    async with AsyncPipeline(transport, policies=[BearerTokenPolicy(credential, SCOPE)]) as pipeline:
        with emulator.hold():  # the token is not answered while the request is cancelled
            run = asyncio.ensure_future(
                pipeline.run(HttpRequest("GET", f"http://{origin}/"), enforce_https=False)
            )
            await emulator.wait_for_requests(1)
            run.cancel()
            with pytest.raises(asyncio.CancelledError):
                await run
            assert seen == []
        response = await pipeline.run(HttpRequest("GET", f"http://{origin}/"), enforce_https=False)
        assert response.http_response.status_code == 200
    assert len(emulator.requests) == 1
    await credential.close()
    await settle()
    assert other_tasks() == set()


async def test_asgi_lifespan_cancelled_during_warm_up(emulator: Emulator, clock: FakeClock) -> None:
    emulator.hold()  # the warm-up's token request stays unanswered (closing the emulator releases it)

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        message = await receive()
        assert message["type"] == "lifespan.startup"
        await send({"type": "lifespan.startup.complete"})
        message = await receive()
        await send({"type": "lifespan.shutdown.complete"})

    middleware = ManagedIdentityMiddleware(
        app, warmup_scopes=[SCOPE],
        credential_options={"environ": emulator.environ(S.IMDS), "clock": clock},
    )
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    await inbox.put({"type": "lifespan.startup"})
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    lifespan = asyncio.ensure_future(
        middleware({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, inbox.get, send)
    )
    await emulator.wait_for_requests(1)  # inside the warm-up's token request
    lifespan.cancel()  # as a server does when it is stopped during startup
    await asyncio.gather(lifespan, return_exceptions=True)
    await middleware.aclose()
    await settle()
    assert other_tasks() == set()
