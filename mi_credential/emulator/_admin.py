"""The emulator's admin API under ``/emulator/``: its published key and CA, its request log,
its scripted faults and the environment of each source."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from . import _crypto
from ._faults import Fault

if TYPE_CHECKING:
    from ._server import Emulator


async def jwks(request: web.Request) -> web.Response:
    """The key set tokens are signed with (also served over HTTPS)."""
    return web.json_response(_crypto.jwks())


class AdminApi:
    """The admin routes of one emulator."""

    def __init__(self, emulator: Emulator) -> None:
        self._emulator = emulator

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/emulator/jwks", jwks)
        app.router.add_get("/emulator/ca.pem", self._ca)
        app.router.add_get("/emulator/requests", self._list_requests)
        app.router.add_delete("/emulator/requests", self._clear_requests)
        app.router.add_get("/emulator/faults", self._list_faults)
        app.router.add_post("/emulator/faults", self._add_fault)
        app.router.add_delete("/emulator/faults", self._clear_faults)
        app.router.add_get("/emulator/environment/{source}", self._environment)

    async def _ca(self, request: web.Request) -> web.Response:
        return web.Response(
            body=_crypto.tls_material().ca_pem, content_type="application/x-pem-file"
        )

    async def _list_requests(self, request: web.Request) -> web.Response:
        return web.json_response([r.redacted() for r in self._emulator.requests])

    async def _clear_requests(self, request: web.Request) -> web.Response:
        self._emulator.requests.clear()
        return web.Response(status=204)

    async def _list_faults(self, request: web.Request) -> web.Response:
        return web.json_response(
            [
                {"source": f.source, "action": f.action, "status": f.status, "times": f.times}
                for f in self._emulator.faults
            ]
        )

    async def _add_fault(self, request: web.Request) -> web.Response:
        try:
            data = await request.json()
            faults = data if isinstance(data, list) else [data]
            added = [self._emulator.add_fault(Fault.from_json(item)) for item in faults]
        except (ValueError, TypeError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response({"added": len(added)}, status=201)

    async def _clear_faults(self, request: web.Request) -> web.Response:
        self._emulator.faults.clear()
        return web.Response(status=204)

    async def _environment(self, request: web.Request) -> web.Response:
        try:
            return web.json_response(self._emulator.environ(request.match_info["source"]))
        except ValueError:
            return web.json_response({"error": "unknown source"}, status=404)
