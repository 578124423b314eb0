"""What an ASGI server does, in process: drive the lifespan protocol, hand each request a copy
of the lifespan state, and talk HTTP to the application through httpx's ASGITransport. And a
guard: no test here may connect anywhere but loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest

from mi_credential.emulator import Emulator
from tests.conftest import FakeClock

VAULT = "https://vault.azure.net/.default"
STORAGE = "https://storage.azure.com/.default"

# A bound on waits that should finish at once, so that a bug fails the test instead of hanging
# it. Never an assertion on duration.
GUARD = 10.0


class StartupFailed(Exception):
    """The application answered ``lifespan.startup.failed``."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Lifespan:
    """The lifespan protocol as a server runs it: ``lifespan.startup``, then later
    ``lifespan.shutdown``, each answered by the application."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.state: dict[str, Any] = {}
        self.sent: list[dict[str, Any]] = []
        self._receive: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._send: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    async def _send_message(self, message: dict[str, Any]) -> None:
        self.sent.append(message)
        await self._send.put(message)

    async def startup(self) -> None:
        scope = {
            "type": "lifespan",
            "asgi": {"version": "3.0", "spec_version": "2.0"},
            "state": self.state,
        }
        self._task = asyncio.create_task(self.app(scope, self._receive.get, self._send_message))
        await self._receive.put({"type": "lifespan.startup"})
        message = await asyncio.wait_for(self._send.get(), GUARD)
        if message["type"] == "lifespan.startup.failed":
            # An application may also raise after reporting the failure (Starlette re-raises
            # its lifespan's exception); a server logs that, as the report says it all.
            await asyncio.wait([self._task], timeout=GUARD)
            assert self._task.done()
            if not self._task.cancelled():
                self._task.exception()
            raise StartupFailed(message.get("message", ""))
        assert message["type"] == "lifespan.startup.complete", message

    async def shutdown(self) -> dict[str, Any]:
        assert self._task is not None
        await self._receive.put({"type": "lifespan.shutdown"})
        message = await asyncio.wait_for(self._send.get(), GUARD)
        await asyncio.wait_for(self._task, GUARD)
        return message

    def per_request_state(self, app: Any) -> Any:
        """``app`` as a server with lifespan state calls it: each request gets a shallow copy
        of the lifespan state in ``scope["state"]``."""

        async def serve(scope: dict[str, Any], receive: Any, send: Any) -> None:
            if scope["type"] in ("http", "websocket"):
                scope = {**scope, "state": dict(self.state)}
            await app(scope, receive, send)

        return serve


@asynccontextmanager
async def running(app: Any, *, lifespan: bool = True) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client for ``app``, with its lifespan run around it (unless ``lifespan=False``,
    as a server started with lifespan off)."""
    manager = Lifespan(app)
    if lifespan:
        await manager.startup()
        target = manager.per_request_state(app)
    else:
        target = app
    transport = httpx.ASGITransport(app=target)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://app.test") as client:
            yield client
    finally:
        if lifespan:
            message = await manager.shutdown()
            assert message["type"] == "lifespan.shutdown.complete", message


@pytest.fixture
def credential_options(emulator: Emulator, clock: FakeClock) -> Callable[..., dict[str, Any]]:
    """Options for a credential the middleware creates, at a source of the emulator."""

    def options(source: str = "app_service", **extra: Any) -> dict[str, Any]:
        return {
            "environ": emulator.environ(source),
            "clock": clock,
            "sleep": clock.sleep,
            "connection_verify": emulator.ca_file,
            **extra,
        }

    return options


def no_source_environ(emulator: Emulator) -> dict[str, str]:
    """An environment where no managed identity source can be determined: IDENTITY_ENDPOINT
    without IDENTITY_HEADER or IMDS_ENDPOINT. (An empty environment would mean IMDS at
    169.254.169.254, which tests never call.)"""
    return {"IDENTITY_ENDPOINT": emulator.http_url + "/msi/token"}


def assert_no_secret(emulator: Emulator, *texts: str) -> None:
    """No secret the emulator handed out appears in any of ``texts``."""
    for secret in emulator.secrets():
        for text in texts:
            assert secret not in text
