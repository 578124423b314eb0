"""How the emulator serves one token request, whatever the source: record it, hold it while the
gate is closed, add the configured latency, act out a scripted fault or let the source's endpoint
answer (for another identity, under an ``other_identity`` fault), then record the status and
write the response. A request whose query string or form is malformed is recorded and refused
at once (400, in the source's shape): no hold, latency or fault applies to it."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from .._models import ManagedIdentitySource
from ._faults import RecordedRequest, misbehave, take_fault
from ._guard import MalformedRequest, answer_and_close, check_query, read_form
from ._handlers import serving_as
from ._identities import EmulatedIdentity
from ._recording import Gate, RequestLog
from ._refusals import Reject, bad_request

if TYPE_CHECKING:
    from ._server import Emulator

#: A source's endpoint: the token body it answers with, or :class:`Reject`.
Handler = Callable[[web.Request, RecordedRequest], Awaitable[dict[str, Any]]]


class Dispatcher:
    """Serves an emulator's token routes, reading its ``latency``, ``faults`` and ``clock`` per
    request and adding to its ``issued_tokens``; owns the request log and the gate."""

    def __init__(self, emulator: Emulator) -> None:
        self._emulator = emulator
        self.gate = Gate()
        self.log = RequestLog(self.gate, emulator.history)
        self._closing = asyncio.Event()

    def close(self) -> None:
        """The emulator is closing: let held requests through and end hanging ones."""
        self._closing.set()
        self.gate.open()

    def route(
        self, source: ManagedIdentitySource, handler: Handler
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        """The aiohttp handler of ``source``'s token route."""

        async def serve(request: web.Request) -> web.StreamResponse:
            form, problem = None, None
            try:
                form = await read_form(request)
                check_query(request)
            except MalformedRequest as exc:
                problem = str(exc)
            record = RecordedRequest(
                source=source.value,
                method=request.method,
                path=request.path,
                query=tuple(request.query.items()),
                headers={k.lower(): v for k, v in request.headers.items()},
                form=form,
                time=self._emulator.clock(),
            )
            self.log.add(record)
            if problem is not None:
                response: web.StreamResponse = _refusal(bad_request(source, problem))
            else:
                await self.gate.pass_through()
                response = await self._respond(source, request, record, handler)
            record = self.log.answer(record, response.status)
            try:
                if problem is not None:
                    await answer_and_close(request, response)
                await _send(request, response)
            finally:
                self.log.written(record)
            return response

        return serve

    async def _respond(
        self,
        source: ManagedIdentitySource,
        request: web.Request,
        record: RecordedRequest,
        handler: Handler,
    ) -> web.StreamResponse:
        emulator = self._emulator
        if emulator.latency:
            await asyncio.sleep(emulator.latency)
        fault = take_fault(emulator.faults, source.value)
        served_as = None
        if fault is not None:
            if fault.delay:
                await asyncio.sleep(fault.delay)
            if fault.action == "other_identity":
                served_as = (
                    fault.identity or emulator.system_identity or EmulatedIdentity.create("other")
                )
            elif not fault.passes_through:
                return await misbehave(fault, request, record, self._closing)
        try:
            with serving_as(served_as):
                body = await handler(request, record)
        except Reject as reject:
            return _refusal(reject)
        emulator.issued_tokens.append(body["access_token"])
        return web.json_response(body)


def _refusal(reject: Reject) -> web.Response:
    return web.json_response(reject.body, status=reject.status, headers=reject.headers)


async def _send(request: web.Request, response: web.StreamResponse) -> None:
    """Write ``response`` now rather than after the handler returns: the same bytes aiohttp
    would write, but on the connection before anyone waiting for responses resumes. A response
    a fault already started is left as it is, and so is a connection that is gone."""
    if response.prepared:
        return
    try:
        await response.prepare(request)
        await response.write_eof()
    except ConnectionError:
        return  # the client left, or a fault dropped the connection: aiohttp finds it so too
