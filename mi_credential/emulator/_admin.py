"""The emulator's admin API under ``/emulator/``: its published key and CA, its request log,
its scripted faults and the environment of each source.

Like every route of the emulator it answers loopback names only (see
:mod:`~mi_credential.emulator._guard`). A body must be JSON, of at most 256 KiB (see
:mod:`~mi_credential.emulator._schema`); a refusal is JSON too: ``error``, and the ``field``
(and the ``index`` of the fault in a posted list) it is about.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

from . import _crypto
from ._faults import Fault
from ._guard import answer_and_close
from ._schema import InvalidInput, read_json

#: The most faults that may be pending (not used up) when more are posted.
MAX_FAULTS = 1000

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
        """Add a fault, or a list of them: all of them, or none if one is refused. Faults that
        are used up are dropped from the list first."""
        try:
            data = await read_json(request)
        except InvalidInput as exc:
            response = web.json_response(exc.body(), status=exc.status)
            await answer_and_close(request, response)
            return response
        items: list[Any] = data if isinstance(data, list) else [data]
        faults = []
        for index, item in enumerate(items):
            try:
                faults.append(Fault.from_json(item))
            except InvalidInput as exc:
                body = exc.body(index if isinstance(data, list) else None)
                return web.json_response(body, status=exc.status)
        pending = self._emulator.faults
        pending[:] = [f for f in pending if f.times is None or f.times > 0]
        if len(pending) + len(faults) > MAX_FAULTS:
            error = f"at most {MAX_FAULTS} faults may be pending: DELETE /emulator/faults first"
            return web.json_response({"error": error}, status=400)
        for fault in faults:
            self._emulator.add_fault(fault)
        return web.json_response({"added": len(faults)}, status=201)

    async def _clear_faults(self, request: web.Request) -> web.Response:
        self._emulator.faults.clear()
        return web.Response(status=204)

    async def _environment(self, request: web.Request) -> web.Response:
        try:
            return web.json_response(self._emulator.environ(request.match_info["source"]))
        except ValueError:
            return web.json_response({"error": "unknown source"}, status=404)
