"""The helpers in a real FastAPI application: dependencies, the 503 problem response and the
readiness route, against the emulator."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

import pytest
from azure.core.exceptions import ClientAuthenticationError
from fastapi import Depends, FastAPI, Request

from mi_credential.emulator import Emulator, Fault
from mi_credential_asgi import (
    ManagedIdentityMiddleware,
    TokenProvider,
    add_credential_error_handler,
    add_readiness_route,
    bearer_token,
    token_provider,
)
from tests.conftest import FakeClock

from .conftest import STORAGE, VAULT, assert_no_secret, no_source_environ, running

Options = Callable[..., dict[str, Any]]

Identity = Annotated[TokenProvider, Depends(token_provider())]
VaultToken = Annotated[str, Depends(bearer_token(VAULT))]


def build_app(emulator: Emulator, *, expose_details: bool = False, **middleware: Any) -> FastAPI:
    app = FastAPI()
    app.add_middleware(ManagedIdentityMiddleware, **middleware)
    add_credential_error_handler(app, expose_details=expose_details)
    add_readiness_route(app)

    @app.get("/vault")
    async def vault(token: VaultToken, again: VaultToken) -> dict[str, Any]:
        claims = emulator.verify(token, audience="https://vault.azure.net")
        return {"aud": claims["aud"], "same": token == again}

    @app.get("/provider")
    async def provider(identity: Identity, request: Request) -> dict[str, Any]:
        token = await identity.token(STORAGE)
        return {
            "is_state": identity is request.state.managed_identity,
            "aud": emulator.verify(token)["aud"],
        }

    @app.get("/foreign")
    async def foreign() -> None:
        # As an Azure SDK client raises on a 401 from its service: a message that may quote
        # the response, which must not reach the client.
        raise ClientAuthenticationError(message="Server said: CANARY-7f3e token=eyJhbGciOi.x.y")

    return app


async def test_bearer_token_dependency(emulator: Emulator, credential_options: Options) -> None:
    app = build_app(emulator, credential_options=credential_options())
    async with running(app) as client:
        for _ in range(3):
            response = await client.get("/vault")
            assert response.json() == {"aud": "https://vault.azure.net", "same": True}
    assert emulator.issued == 1  # one acquisition; the rest were cache hits
    assert bearer_token(VAULT) is bearer_token(VAULT)  # so FastAPI resolves it once a request


async def test_token_provider_dependency(emulator: Emulator, credential_options: Options) -> None:
    app = build_app(emulator, credential_options=credential_options())
    async with running(app) as client:
        response = await client.get("/provider")
    assert response.json() == {"is_state": True, "aud": "https://storage.azure.com"}


def test_dependencies_are_not_query_parameters(emulator: Emulator) -> None:
    app = build_app(emulator, credential=object())  # never called: only the schema is built
    parameters = [
        p for path in app.openapi()["paths"].values() for op in path.values()
        for p in op.get("parameters", [])
    ]
    assert parameters == []
    assert "/health/identity" not in app.openapi()["paths"]


async def test_unavailable_identity_is_a_503_problem(
    emulator: Emulator, credential_options: Options, caplog: pytest.LogCaptureFixture
) -> None:
    app = build_app(
        emulator, credential_options=credential_options(environ=no_source_environ(emulator))
    )
    async with running(app) as client:
        response = await client.get("/vault")
    assert response.status_code == 503
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["cache-control"] == "no-store"
    assert response.json() == {
        "type": "about:blank",
        "title": "Service Unavailable",
        "status": 503,
        "detail": "The service's managed identity is not available. Try again later.",
        "code": "managed_identity_unavailable",
    }
    logged = [r.getMessage() for r in caplog.records if r.name == "mi_credential_asgi"]
    assert logged == [
        "GET /vault answered 503: CredentialUnavailableError: No managed identity endpoint "
        "found: IDENTITY_ENDPOINT is set but neither IDENTITY_HEADER (App Service) nor "
        "IMDS_ENDPOINT (Azure Arc) is, so the hosting platform cannot be determined. Visit "
        "https://aka.ms/azsdk/python/identity/managedidentitycredential/troubleshoot to "
        "troubleshoot this issue."
    ]


async def test_a_refused_token_request_is_a_503_problem_without_secrets(
    emulator: Emulator, credential_options: Options
) -> None:
    emulator.add_fault(
        Fault.status_code(
            400,
            source="app_service",
            times=None,
            body={"error": "invalid_request", "error_description": f"echo {emulator.secret}"},
        )
    )
    app = build_app(emulator, expose_details=True, credential_options=credential_options())
    async with running(app) as client:
        response = await client.get("/vault")
    body = response.json()
    assert response.status_code == 503
    assert body["code"] == "token_unavailable"
    assert body["detail"].startswith("App Service managed identity endpoint answered HTTP 400")
    assert_no_secret(emulator, response.text)


async def test_other_authentication_errors_are_a_503_that_quotes_nothing(
    emulator: Emulator, credential_options: Options, caplog: pytest.LogCaptureFixture
) -> None:
    app = build_app(emulator, expose_details=True, credential_options=credential_options())
    async with running(app) as client:
        response = await client.get("/foreign")
    assert response.status_code == 503
    assert response.json()["code"] == "authentication_failed"
    assert response.json()["detail"] == (
        "The service could not authenticate to a service it uses. Try again later."
    )
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert "CANARY-7f3e" not in response.text + logged
    assert "eyJhbGciOi" not in response.text + logged
    assert (
        "GET /foreign answered 503: ClientAuthenticationError (details withheld: not an "
        "mi-credential error)" in logged
    )


async def test_readiness_route(
    emulator: Emulator, credential_options: Options, clock: FakeClock
) -> None:
    emulator.add_fault(Fault.status_code(503, source="app_service", times=None))
    app = build_app(
        emulator,
        credential_options=credential_options(),
        warmup_scopes=[VAULT],
        clock=clock,
    )
    async with running(app) as client:
        # Lenient warm-up failed: not ready, and the probe's own attempt fails too.
        probe = await client.get("/health/identity")
        assert probe.status_code == 503
        report = probe.json()
        assert report["ready"] is False
        assert report["source"] == "app_service"
        assert report["credential"] == "ManagedIdentityCredential"
        assert report["scopes"] == [{"scope": VAULT, "expires_in": None, "warm_up": True}]
        assert report["last_error"]["type"] == "TokenRequestError"
        assert report["last_error"]["scope"] == VAULT
        assert "answered HTTP 503" in report["last_error"]["message"]

        emulator.faults.clear()  # the endpoint recovers; the next probe acquires the token
        probe = await client.get("/health/identity")
        assert probe.status_code == 200
        report = probe.json()
        assert report["ready"] is True
        [vault] = report["scopes"]
        assert vault["scope"] == VAULT and vault["warm_up"] is True
        # The emulator stamps whole seconds; the fake clock has moved by the retries' jitter.
        assert emulator.token_lifetime - 1 < vault["expires_in"] <= emulator.token_lifetime
        assert report["last_error"]["age"] >= 0

        await client.get("/provider")  # another scope, reported but not required
        before = (await client.get("/health/identity")).json()["scopes"]
        clock.advance(600)
        after = (await client.get("/health/identity")).json()["scopes"]
        assert [s["scope"] for s in after] == [VAULT, STORAGE]
        assert [s["warm_up"] for s in after] == [True, False]
        for old, new in zip(before, after, strict=True):
            assert old["expires_in"] - new["expires_in"] == pytest.approx(600, abs=0.002)
        assert_no_secret(emulator, probe.text)
        assert (await client.head("/health/identity")).status_code == 200
