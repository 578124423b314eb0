"""A FastAPI service that lists the Azure subscriptions its managed identity can read
(mi_credential_asgi: one credential per process, warmed at startup, a readiness route, and a
503 problem response when the identity is unavailable).

    uvicorn fastapi_app:app --app-dir samples --host 0.0.0.0   # on Azure (App Service, AKS...)
    python samples/fastapi_app.py --emulator                   # anywhere: serve on 127.0.0.1
                                                               # against the emulator, call
                                                               # the app, and stop

    GET /subscriptions      the subscriptions (the identity needs Reader on them)
    GET /health/identity    readiness: the hosting source and each token's time to expiry

Needs ``pip install "mi-credential[fastapi]" uvicorn`` (and the ``emulator`` extra).
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Annotated, Any

import aiohttp
import uvicorn
from fastapi import Depends, FastAPI, Request

from mi_credential_asgi import (
    ManagedIdentityMiddleware,
    add_credential_error_handler,
    add_readiness_route,
    bearer_token,
)

ARM_URL = "https://management.azure.com"
ARM_SCOPE = "https://management.azure.com/.default"

ArmToken = Annotated[str, Depends(bearer_token(ARM_SCOPE))]


def create_app(
    *, credential_options: Mapping[str, Any] | None = None, arm_url: str = ARM_URL
) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with aiohttp.ClientSession() as http:
            app.state.http = http
            yield

    app = FastAPI(lifespan=lifespan)
    # The credential is created at startup from the environment the platform sets, and its
    # token for Resource Manager acquired before the first request.
    app.add_middleware(
        ManagedIdentityMiddleware, credential_options=credential_options, warmup_scopes=[ARM_SCOPE]
    )
    add_credential_error_handler(app)  # ClientAuthenticationError -> 503 problem+json
    add_readiness_route(app)  # GET /health/identity

    @app.get("/subscriptions")
    async def subscriptions(request: Request, token: ArmToken) -> dict[str, list[str]]:
        http: aiohttp.ClientSession = request.app.state.http
        async with http.get(
            f"{arm_url}/subscriptions",
            params={"api-version": "2022-12-01"},
            headers={"Authorization": f"Bearer {token}"},
        ) as response:
            response.raise_for_status()
            body = await response.json()
        return {"subscriptions": [s["displayName"] for s in body["value"]]}

    return app


app = create_app()


async def run_against_emulator() -> None:
    from _emulated_azure import emulated_azure

    async with emulated_azure("app_service") as azure:
        local = create_app(credential_options={"environ": azure.environ}, arm_url=azure.arm_url)
        server = uvicorn.Server(
            uvicorn.Config(local, host="127.0.0.1", port=0, log_level="warning")
        )
        serving = asyncio.create_task(server.serve())
        while not server.started:
            if serving.done():
                raise SystemExit("the app failed to start")
            await asyncio.sleep(0.05)
        port = server.servers[0].sockets[0].getsockname()[1]
        try:
            async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as client:
                for path in ("/subscriptions", "/health/identity"):
                    async with client.get(path) as response:
                        print(f"GET {path} -> {response.status} {await response.json()}")
        finally:
            server.should_exit = True
            await serving


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--emulator", action="store_true", help="use the local emulator")
    if parser.parse_args().emulator:
        asyncio.run(run_against_emulator())
    else:
        uvicorn.run(app, host="127.0.0.1", port=8000)
