"""A minimal IMDS + App Service token endpoint with artificial latency, for benchmarks.

Runs in its own process (``python -m benchmarks._fake_endpoint --latency 0.005``) so that its work
is not measured with the client's: it prints ``PORT <n>`` once listening. Each token it issues is
unique, so clients' results can be told apart; ``GET /count`` returns how many it issued,
``GET /received`` how many token requests it received (rejected ones too), and ``POST /reset``
zeroes both.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

from aiohttp import web

SECRET = "bench-identity-header"


def make_app(latency: float) -> web.Application:
    state = {"count": 0, "received": 0}

    async def token(request: web.Request) -> web.Response:
        state["received"] += 1
        if request.path.startswith("/metadata") and request.headers.get("Metadata") != "true":
            return web.json_response({"error": "invalid_request"}, status=400)
        if request.path == "/msi/token" and request.headers.get("X-IDENTITY-HEADER") != SECRET:
            return web.json_response({"statusCode": 401}, status=401)
        if latency:
            await asyncio.sleep(latency)
        state["count"] += 1
        now = int(time.time())
        return web.json_response(
            {
                "access_token": f"bench-{uuid.uuid4().hex}" + "x" * 1200,  # JWT-sized
                "expires_in": "86400",
                "expires_on": str(now + 86400),
                "ext_expires_in": "86400",
                "not_before": str(now),
                "resource": request.query.get("resource", ""),
                "token_type": "Bearer",
                "client_id": "00000000-0000-0000-0000-000000000000",
            }
        )

    async def count(request: web.Request) -> web.Response:
        return web.json_response(state["count"])

    async def received(request: web.Request) -> web.Response:
        return web.json_response(state["received"])

    async def reset(request: web.Request) -> web.Response:
        state["count"] = state["received"] = 0
        return web.json_response(0)

    app = web.Application()
    app.router.add_get("/metadata/identity/oauth2/token", token)
    app.router.add_get("/msi/token", token)
    app.router.add_get("/count", count)
    app.router.add_get("/received", received)
    app.router.add_post("/reset", reset)
    return app


async def serve(latency: float) -> None:
    runner = web.AppRunner(make_app(latency), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=2048)
    await site.start()
    server = site._server
    assert server is not None
    port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
    print(f"PORT {port}", flush=True)
    await asyncio.Event().wait()


@contextlib.contextmanager
def running(latency: float) -> Iterator[str]:
    """Start the endpoint in a subprocess; yields its base URL."""
    process = subprocess.Popen(
        [sys.executable, "-m", "benchmarks._fake_endpoint", "--latency", str(latency)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        if not line.startswith("PORT "):
            raise RuntimeError("the fake endpoint did not start")
        yield f"http://127.0.0.1:{int(line.split()[1])}"
    finally:
        process.terminate()
        process.wait(timeout=10)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--latency", type=float, default=0.005)
    arguments = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(arguments.latency))
