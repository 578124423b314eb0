"""What the samples' ``--emulator`` option runs instead of Azure: the managed identity emulator
of mi-credential, and a stand-in for Azure Resource Manager's subscription list on 127.0.0.1
that answers only requests carrying a token the emulator signed for Resource Manager.

Not part of any sample's logic: copy a sample without this file and leave out ``--emulator``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import jwt
from aiohttp import web

from mi_credential.emulator import Emulator

ARM_AUDIENCE = "https://management.azure.com"


@dataclass(frozen=True)
class EmulatedAzure:
    """The environment that points a credential at the emulator, and the stand-in's URL."""

    emulator: Emulator
    environ: dict[str, str]
    arm_url: str


@asynccontextmanager
async def emulated_azure(source: str = "imds") -> AsyncIterator[EmulatedAzure]:
    """Start the emulator (answering as ``source``) and the Resource Manager stand-in."""
    async with Emulator() as emulator:

        async def subscriptions(request: web.Request) -> web.Response:
            scheme, _, token = request.headers.get("Authorization", "").partition(" ")
            try:
                if scheme.lower() != "bearer":
                    raise jwt.InvalidTokenError("no bearer token")
                emulator.verify(token, audience=ARM_AUDIENCE)
            except jwt.InvalidTokenError:
                return web.json_response(
                    {"error": {"code": "InvalidAuthenticationToken"}},
                    status=401,
                    headers={"WWW-Authenticate": 'Bearer authorization_uri="emulator"'},
                )
            return web.json_response(
                {
                    "value": [
                        {
                            "subscriptionId": "00000000-0000-0000-0000-000000000000",
                            "displayName": "Emulated subscription",
                            "state": "Enabled",
                        }
                    ]
                }
            )

        app = web.Application()
        app.router.add_get("/subscriptions", subscriptions)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        try:
            port = runner.addresses[0][1]
            yield EmulatedAzure(emulator, emulator.environ(source), f"http://127.0.0.1:{port}")
        finally:
            await runner.cleanup()
