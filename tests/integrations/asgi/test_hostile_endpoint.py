"""What the ASGI integration serves when the token endpoint is hostile: an endpoint whose reason
phrase and Content-Type echo the identity header (and a JWT). The readiness route's
``last_error``, the problem+json body with ``expose_details=True`` and a strict warm-up's
failure message all quote the credential's error; none of them may carry the secret."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from mi_credential_asgi import (
    ManagedIdentityMiddleware,
    add_credential_error_handler,
    add_readiness_route,
    bearer_token,
)
from tests.conftest import FakeClock
from tests.reliability.test_hostile_responses import JWT, SECRET, TOKEN, Endpoint, respond, serve

from .conftest import StartupFailed, running

VAULT = "https://vault.azure.net/.default"


@pytest.fixture
async def endpoint() -> AsyncIterator[Endpoint]:
    async with serve() as served:
        yield served
ECHO = f"Echo {SECRET} {JWT}"


def hostile(endpoint: Endpoint) -> None:
    endpoint.handler = respond(
        500, body=b"<html>down</html>", reason=ECHO, headers={"Content-Type": f"text/html; {ECHO}"}
    )


def build_app(endpoint: Endpoint, clock: FakeClock, **middleware: Any) -> Starlette:
    async def vault(request: Request) -> JSONResponse:
        return JSONResponse({"length": len(await bearer_token(VAULT)(request))})

    app = Starlette(routes=[Route("/vault", vault)])
    options = {"environ": endpoint.environ(), "clock": clock, "sleep": clock.sleep, "timeout": 5}
    app.add_middleware(ManagedIdentityMiddleware, credential_options=options, **middleware)
    add_readiness_route(app)
    add_credential_error_handler(app, expose_details=True)
    return app


def assert_clean(*texts: str) -> None:
    for text in texts:
        for secret in (SECRET, JWT, TOKEN):
            assert secret not in text


async def test_served_errors_carry_no_secret(
    endpoint: Endpoint, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    hostile(endpoint)
    app = build_app(endpoint, clock, warmup_scopes=[VAULT])
    async with running(app) as client:
        problem = await client.get("/vault")
        ready = await client.get("/health/identity")
    assert problem.status_code == 503 and "HTTP 500" in problem.text  # the details are exposed
    assert ready.json()["last_error"] is not None
    assert_clean(problem.text, ready.text, *(r.getMessage() for r in caplog.records))


async def test_a_strict_warm_up_failure_carries_no_secret(
    endpoint: Endpoint, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    hostile(endpoint)
    caplog.set_level(logging.DEBUG)
    app = build_app(endpoint, clock, warmup_scopes=[VAULT], strict=True)
    with pytest.raises(StartupFailed) as failed:
        async with running(app):
            pass
    assert "HTTP 500" in str(failed.value)
    assert_clean(str(failed.value), *(r.getMessage() for r in caplog.records))
