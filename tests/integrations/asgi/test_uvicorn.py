"""A FastAPI application served by uvicorn on 127.0.0.1 with a real lifespan."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any

import httpx
import pytest
import uvicorn
from fastapi import Depends, FastAPI, Request
from uvicorn.lifespan.on import LifespanOn

from mi_credential import ManagedIdentityError
from mi_credential.emulator import Emulator
from mi_credential_asgi import ManagedIdentityMiddleware, add_readiness_route, bearer_token

from .conftest import GUARD, VAULT, no_source_environ

Options = Callable[..., dict[str, Any]]


def build_app(emulator: Emulator, events: list[str], **middleware: Any) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        events.append("app startup")
        yield {"db": "pool"}  # lifespan state, which uvicorn copies into every request
        events.append("app shutdown")

    app = FastAPI(lifespan=lifespan)
    app.add_middleware(ManagedIdentityMiddleware, **middleware)
    add_readiness_route(app)

    @app.get("/vault")
    async def vault(
        request: Request, token: Annotated[str, Depends(bearer_token(VAULT))]
    ) -> dict[str, Any]:
        provider = request.state.managed_identity
        events.append(f"credential: {id(provider.credential)}")
        return {"aud": emulator.verify(token)["aud"], "db": request.state.db}

    return app


class Server(uvicorn.Server):
    """uvicorn's server, with an event for the end of its startup (listening, or failed)."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.startup_ended = asyncio.Event()

    async def startup(self, sockets: Any = None) -> None:
        try:
            await super().startup(sockets=sockets)
        finally:
            self.startup_ended.set()


@asynccontextmanager
async def serve(app: FastAPI) -> AsyncIterator[tuple[uvicorn.Server, str]]:
    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, lifespan="on", log_config=None, access_log=False
    )
    server = Server(config)
    task = asyncio.create_task(server.serve())
    try:
        await asyncio.wait_for(server.startup_ended.wait(), GUARD)
        if not server.started:
            await asyncio.wait_for(task, GUARD)  # startup failed: raise what the server raised
            raise AssertionError("uvicorn stopped before it started")
        port = server.servers[0].sockets[0].getsockname()[1]
        yield server, f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, GUARD)


async def test_served_by_uvicorn(emulator: Emulator, credential_options: Options) -> None:
    events: list[str] = []
    app = build_app(
        emulator, events, credential_options=credential_options(), warmup_scopes=[VAULT]
    )
    async with serve(app) as (_, url), httpx.AsyncClient(base_url=url) as client:
        assert events == ["app startup"]
        assert emulator.issued == 1  # warmed at startup
        for _ in range(2):
            response = await client.get("/vault")
            assert response.json() == {"aud": "https://vault.azure.net", "db": "pool"}
        assert (await client.get("/health/identity")).json()["ready"] is True
        assert emulator.issued == 1
    credential_ids = {e for e in events if e.startswith("credential: ")}
    assert len(credential_ids) == 1
    assert events[-1] == "app shutdown"
    # Find the credential the middleware created through the app's middleware stack.
    middleware = app.middleware_stack
    while not isinstance(middleware, ManagedIdentityMiddleware):
        middleware = middleware.app  # type: ignore[union-attr]
    with pytest.raises(ManagedIdentityError, match="closed"):
        await middleware.credential.get_token(VAULT)


async def test_strict_failure_fails_uvicorns_startup(
    emulator: Emulator, credential_options: Options, caplog: pytest.LogCaptureFixture
) -> None:
    """uvicorn's own lifespan runner, without ``Server.serve``, which ends the process with
    ``sys.exit(3)`` on a failed startup (a SystemExit would escape the test's event loop)."""
    events: list[str] = []
    app = build_app(
        emulator,
        events,
        credential_options=credential_options(environ=no_source_environ(emulator)),
        warmup_scopes=[VAULT],
        strict=True,
    )
    config = uvicorn.Config(app, host="127.0.0.1", port=0, lifespan="on", log_config=None)
    config.load()
    lifespan = LifespanOn(config)
    await asyncio.wait_for(lifespan.startup(), GUARD)
    assert lifespan.startup_failed and lifespan.should_exit  # serve() would exit with status 3
    assert events == ["app startup", "app shutdown"]
    reported = [r.getMessage() for r in caplog.records if r.name == "uvicorn.error"]
    assert any(
        m.startswith("Managed identity warm-up failed, so startup is aborted (strict)")
        for m in reported
    )
    assert "Application startup failed. Exiting." in reported
