"""Scripted failures, how the emulator acts them out, and the record of a request."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from ._identities import EmulatedIdentity
from ._schema import Action, fault_fields


@dataclass
class Fault:
    """One scripted misbehaviour, applied to the next ``times`` matching token requests.

    Attributes:
        source: The source it applies to (``"imds"``, ``"app_service"``, ... as in
            :class:`~mi_credential.ManagedIdentitySource`), or ``None`` for every source.
        action: ``respond`` with ``status``/``headers``/``body``; ``drop`` the connection without
            answering; ``reset`` the connection after half a body; ``hang`` (never answer);
            ``other_identity``: answer as usual (a well-formed token response, correctly signed)
            but for ``identity``, whatever identity the request names, as a platform that
            ignores the identity selector does.
        status: Status of the response.
        headers: Headers of the response.
        body: Body of the response: bytes, text, a JSON-serialisable value, or a callable that
            takes the :class:`RecordedRequest` and returns one of those.
        content_type: Content-Type of the response.
        delay: Seconds to wait before acting (real time: for read timeouts).
        times: How many requests it applies to; ``None`` for all of them.
        skip: How many matching requests to let through before it applies.
        identity: For ``other_identity``: the identity answered for; by default the
            system-assigned identity (a fresh identity if there is none). Over the admin API,
            an object with ``client_id``, ``object_id`` and ``resource_id``.
    """

    source: str | None = None
    action: Action = "respond"
    status: int = 500
    headers: dict[str, str] = field(default_factory=dict)
    body: Any = None
    content_type: str = "application/json"
    delay: float = 0.0
    times: int | None = 1
    skip: int = 0
    identity: EmulatedIdentity | None = None

    @classmethod
    def status_code(
        cls,
        status: int,
        *,
        retry_after: float | str | None = None,
        body: Any = None,
        source: str | None = None,
        times: int | None = 1,
    ) -> Fault:
        """An error status, optionally with ``Retry-After``."""
        headers = {} if retry_after is None else {"Retry-After": str(retry_after)}
        if body is None:
            body = {"error": "emulated_fault", "error_description": f"Emulated HTTP {status}"}
        return cls(source=source, status=status, headers=headers, body=body, times=times)

    @classmethod
    def html(cls, status: int = 200, *, source: str | None = None, times: int | None = 1) -> Fault:
        """An HTML page, as a captive portal or proxy serves."""
        return cls(
            source=source,
            status=status,
            body="<html><body><h1>Proxy Authentication Required</h1></body></html>",
            content_type="text/html",
            times=times,
        )

    @classmethod
    def json_body(
        cls, body: Any, *, status: int = 200, source: str | None = None, times: int | None = 1
    ) -> Fault:
        """A JSON body of your choosing (a token without expiry, an odd date format...)."""
        return cls(source=source, status=status, body=body, times=times)

    @classmethod
    def raw(
        cls,
        body: bytes,
        *,
        status: int = 200,
        content_type: str = "application/json",
        source: str | None = None,
        times: int | None = 1,
    ) -> Fault:
        """Exact body bytes (truncated JSON, a huge body...)."""
        return cls(source=source, status=status, body=body, content_type=content_type, times=times)

    @classmethod
    def other_identity(
        cls,
        identity: EmulatedIdentity | None = None,
        *,
        source: str | None = None,
        times: int | None = 1,
    ) -> Fault:
        """A token for another identity than the one requested: ``identity``, by default the
        system-assigned identity (a fresh identity if there is none)."""
        return cls(
            source=source, action="other_identity", status=200, identity=identity, times=times
        )

    @classmethod
    def drop(cls, *, source: str | None = None, times: int | None = 1) -> Fault:
        """Close the connection without answering."""
        return cls(source=source, action="drop", times=times)

    @classmethod
    def reset(cls, *, source: str | None = None, times: int | None = 1) -> Fault:
        """Send headers and half a body, then close the connection."""
        return cls(source=source, action="reset", status=200, times=times)

    @classmethod
    def slow(cls, seconds: float, *, source: str | None = None, times: int | None = 1) -> Fault:
        """Answer normally, after ``seconds``."""
        return cls(source=source, action="respond", status=0, delay=seconds, times=times)

    @classmethod
    def hang(cls, *, source: str | None = None, times: int | None = 1) -> Fault:
        """Never answer."""
        return cls(source=source, action="hang", times=times)

    @property
    def passes_through(self) -> bool:
        """A pure delay: after waiting, the request is served normally."""
        return self.action == "respond" and self.status == 0

    def body_bytes(self, request: RecordedRequest) -> bytes:
        body = self.body(request) if callable(self.body) else self.body
        if body is None:
            return b""
        if isinstance(body, bytes):
            return body
        if isinstance(body, str):
            return body.encode()
        return json.dumps(body).encode()

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Fault:
        """A fault from the admin route's JSON, every field checked (see
        :mod:`~mi_credential.emulator._schema`).

        Raises:
            ValueError: An unknown field, or a field of the wrong type or range; its ``field``
                attribute names it.
        """
        return cls(**fault_fields(data))


def take_fault(faults: Sequence[Fault], source: str) -> Fault | None:
    """The fault that applies to this request of ``source`` (the first one scripted that still
    applies), counting the request against it; ``None`` if the request is served normally."""
    for fault in faults:
        if fault.source in (None, source) and (fault.times is None or fault.times > 0):
            if fault.skip > 0:
                fault.skip -= 1
                return None
            if fault.times is not None:
                fault.times -= 1
            return fault
    return None


async def misbehave(
    fault: Fault, request: web.Request, record: RecordedRequest, closing: asyncio.Event
) -> web.StreamResponse:
    """Act out ``fault`` (not a pure delay) on ``request``; ``closing`` ends a hang."""
    transport = request.transport
    if fault.action == "hang":
        await closing.wait()
        return web.Response(status=503)
    if fault.action == "drop":
        if transport is not None:
            transport.abort()
        return web.Response(status=499)
    if fault.action == "reset":
        body = b'{"access_token": "' + b"x" * 512 + b'", "expires_in": "3600"}'
        response = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        response.content_length = len(body)
        await response.prepare(request)
        await response.write(body[: len(body) // 2])
        if transport is not None:
            transport.abort()
        return response
    return web.Response(
        status=fault.status,
        body=fault.body_bytes(record),
        headers={"Content-Type": fault.content_type, **fault.headers},
    )


@dataclass(frozen=True)
class RecordedRequest:
    """A request the emulator received."""

    source: str
    method: str
    path: str
    query: tuple[tuple[str, str], ...]
    headers: Mapping[str, str]
    form: tuple[tuple[str, str], ...] | None
    time: float
    status: int | None = None

    def param(self, name: str) -> str | None:
        """The first query parameter called ``name``."""
        return next((v for k, v in self.query if k == name), None)

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    def form_field(self, name: str) -> str | None:
        return next((v for k, v in self.form or () if k == name), None)

    def redacted(self) -> dict[str, Any]:
        """For the admin route: header values and assertions other than public ones masked."""
        public = {
            "user-agent",
            "x-ms-client-request-id",
            "content-type",
            "metadata",
            "accept",
            "accept-encoding",
            "host",
            "content-length",
        }
        return {
            "source": self.source,
            "method": self.method,
            "path": self.path,
            "query": [list(p) for p in self.query],
            "headers": {k: (v if k in public else "****") for k, v in self.headers.items()},
            "form": [[k, "****" if k == "client_assertion" else v] for k, v in self.form]
            if self.form is not None
            else None,
            "time": self.time,
            "status": self.status,
        }
