"""The ASGI middleware's cost in a Starlette application, side by side in one run.

Five Starlette applications with the same route ``GET /``:

- ``bare``: a trivial handler, no middleware;
- ``middleware``: the same behind ``ManagedIdentityMiddleware`` (the handler asks for no token);
- ``provider``: behind the middleware, the handler fetches a cached token through
  ``request.state.managed_identity``;
- ``reference``: no middleware, the handler fetches a cached token from a module-level
  azure-identity ``ManagedIdentityCredential`` (the usual alternative);
- ``direct``: no middleware, the handler calls a module-level mi-credential directly.

They are measured two ways, contenders alternating batch by batch so that machine noise hits
them alike (figures are medians per request). The trivial-route contenders and the token-fetching
ones are measured as two separate sets, so that one's garbage is not collected in the other's
time:

1. **Over HTTP**: the applications are served by uvicorn in another process on 127.0.0.1 and
   requested with a keep-alive aiohttp client, as a deployed service is. The target for the
   middleware is here: ratio <= 1.02 against the bare application.
2. **In process**: each application is called directly as ASGI (no network, no server), which
   leaves only the application's own work, so the middleware's share looks as large as it can.
   For scale, an empty pure ASGI middleware (``await self.app(...)`` and nothing else) is
   measured too: that is the least any middleware layer costs.

Tokens come from the emulator's App Service endpoint on 127.0.0.1; after the first acquisition
every call is a cache hit, so the endpoint is idle while measurements run.

    python -m benchmarks.bench_asgi            # full run
    python -m benchmarks.bench_asgi --quick    # smoke run
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from mi_credential import ManagedIdentityCredential
from mi_credential.emulator import Emulator
from mi_credential_asgi import ManagedIdentityMiddleware

from ._harness import Row, interleaved, main

SCOPE = "https://vault.azure.net/.default"
REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

App = Callable[[Any, Any, Any], Awaitable[None]]


class _EmptyMiddleware:
    """The least a pure ASGI middleware can do: pass every call on."""

    def __init__(self, app: App) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)


class _Contenders:
    """The applications, and the credentials their handlers use."""

    def __init__(self, emulator: Emulator) -> None:
        from azure.identity.aio import ManagedIdentityCredential as Reference

        environ = emulator.environ("app_service")
        self.ours = ManagedIdentityCredential(environ=environ)
        self.direct = ManagedIdentityCredential(environ=environ)
        saved = {name: os.environ.get(name) for name in environ}
        os.environ.update(environ)  # azure-identity reads the process environment
        try:
            self.reference = Reference()
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
        self.emulator = emulator

        async def trivial(request: Request) -> PlainTextResponse:
            return PlainTextResponse("ok")

        async def via_provider(request: Request) -> PlainTextResponse:
            await request.state.managed_identity.token(SCOPE)
            return PlainTextResponse("ok")

        async def via_reference(request: Request) -> PlainTextResponse:
            await self.reference.get_token(SCOPE)
            return PlainTextResponse("ok")

        async def via_direct(request: Request) -> PlainTextResponse:
            await self.direct.get_token(SCOPE)
            return PlainTextResponse("ok")

        identity = Middleware(ManagedIdentityMiddleware, credential=self.ours)
        self.apps: dict[str, App] = {
            "bare": _starlette(trivial),
            "middleware": _starlette(trivial, identity),
            "provider": _starlette(via_provider, identity),
            "reference": _starlette(via_reference),
            "direct": _starlette(via_direct),
            "empty": _starlette(trivial, Middleware(_EmptyMiddleware)),
        }

    async def check(self) -> None:
        """Every application answers 200 once (which acquires each credential's token)."""
        for app in self.apps.values():
            statuses: list[int] = []

            async def send(message: Any, statuses: list[int] = statuses) -> None:
                if message["type"] == "http.response.start":
                    statuses.append(message["status"])

            await app(_scope(), _receive, send)
            assert statuses == [200], statuses
        assert self.emulator.issued == 3

    async def close(self) -> None:
        await self.ours.close()
        await self.direct.close()
        await self.reference.close()


def _starlette(
    handler: Callable[[Request], Awaitable[PlainTextResponse]], *middleware: Middleware
) -> App:
    return Starlette(routes=[Route("/", handler)], middleware=list(middleware))


def _scope() -> dict[str, Any]:
    """A request scope with the keys uvicorn sets, a per-request lifespan state included."""
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/",
        "raw_path": b"/",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"bench"), (b"user-agent", b"bench")],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }


async def _receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


async def _discard(message: Any) -> None:
    return None


def _asgi_call(app: App) -> Callable[[], Awaitable[None]]:
    async def call() -> None:
        await app(_scope(), _receive, _discard)

    return call


# -- over HTTP: the server process -------------------------------------------------------------


async def _serve() -> None:
    """Serve every application with uvicorn on 127.0.0.1; print their ports as JSON on one
    line; exit when stdin closes."""
    import uvicorn

    async with Emulator() as emulator:
        contenders = _Contenders(emulator)
        await contenders.check()
        servers = {
            name: uvicorn.Server(
                uvicorn.Config(
                    app,
                    host="127.0.0.1",
                    port=0,
                    lifespan="off",
                    access_log=False,
                    log_level="warning",
                )
            )
            for name, app in contenders.apps.items()
        }
        tasks = [asyncio.create_task(server.serve()) for server in servers.values()]
        while not all(server.started for server in servers.values()):
            for task in tasks:
                if task.done():
                    task.result()  # a server failed to start: raise its error
            await asyncio.sleep(0.01)
        ports = {
            name: server.servers[0].sockets[0].getsockname()[1] for name, server in servers.items()
        }
        print(json.dumps(ports), flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        for server in servers.values():
            server.should_exit = True
        await asyncio.gather(*tasks)
        await contenders.close()


async def _over_http(quick: bool) -> dict[str, float]:
    import aiohttp

    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "benchmarks.bench_asgi",
        "--serve",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        cwd=REPOSITORY,
    )
    assert process.stdin is not None and process.stdout is not None
    try:
        line = await process.stdout.readline()
        if not line:
            raise RuntimeError("the benchmark's server process did not start")
        ports: dict[str, int] = json.loads(line)
        async with aiohttp.ClientSession() as session:

            def getter(port: int) -> Callable[[], Awaitable[None]]:
                url = f"http://127.0.0.1:{port}/"

                async def get() -> None:
                    async with session.get(url) as response:
                        await response.read()
                        assert response.status == 200

                return get

            batch, batches = (20, 11) if quick else (20, 301)
            times: dict[str, float] = {}
            for names in (("bare", "middleware"), ("provider", "reference")):
                times |= await interleaved(
                    {name: getter(ports[name]) for name in names}, batch=batch, batches=batches
                )
            return times
    finally:
        process.stdin.close()
        await process.wait()


async def _in_process(contenders: _Contenders, quick: bool) -> dict[str, float]:
    batch, batches = (100, 11) if quick else (100, 301)
    times: dict[str, float] = {}
    # Two sets, so that the garbage azure-identity's handler leaves is not collected during
    # another contender's batch of the trivial-route comparison.
    for names in (("bare", "middleware", "empty"), ("provider", "reference", "direct")):
        gc.collect()
        times |= await interleaved(
            {name: _asgi_call(contenders.apps[name]) for name in names},
            batch=batch,
            batches=batches,
        )
    return times


async def run(quick: bool) -> list[Row]:
    http = await _over_http(quick)
    async with Emulator() as emulator:
        contenders = _Contenders(emulator)
        try:
            await contenders.check()
            local = await _in_process(contenders, quick)
        finally:
            await contenders.close()

    over_http = "ASGI middleware over HTTP (uvicorn in another process, loopback)"
    in_process = "ASGI middleware in process (Starlette app called as ASGI, no server)"
    return [
        Row(
            over_http,
            "trivial route, no token: with middleware",
            http["middleware"],
            http["bare"],
            "s",
            baseline_name="no middleware",
            target="<= 1.02",
        ),
        Row(
            over_http,
            "cached token in the handler via request.state",
            http["provider"],
            http["reference"],
            "s",
            baseline_name="azure-identity, module-level",
        ),
        Row(
            in_process,
            "trivial route, no token: with middleware",
            local["middleware"],
            local["bare"],
            "s",
            baseline_name="no middleware",
        ),
        Row(
            in_process,
            "trivial route: an empty ASGI middleware (the floor)",
            local["empty"],
            local["bare"],
            "s",
            baseline_name="no middleware",
        ),
        Row(
            in_process,
            "cached token in the handler via request.state",
            local["provider"],
            local["reference"],
            "s",
            baseline_name="azure-identity, module-level",
        ),
        Row(
            in_process,
            "cached token in the handler via request.state",
            local["provider"],
            local["direct"],
            "s",
            baseline_name="mi-credential, module-level",
        ),
    ]


if __name__ == "__main__":
    if "--serve" in sys.argv:
        asyncio.run(_serve())
    else:
        main(run)
