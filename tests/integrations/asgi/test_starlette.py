"""The helpers as a Starlette application uses them (no FastAPI), and the readiness data."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from azure.core.exceptions import ClientAuthenticationError
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from mi_credential.emulator import Emulator
from mi_credential_asgi import (
    ManagedIdentityMiddleware,
    bearer_token,
    credential_error_handler,
    get_token_provider,
    problem_details,
    readiness_route,
    token_provider,
)
from tests.conftest import CredentialFactory, FakeClock

from .conftest import VAULT, assert_no_secret, no_source_environ, running

Options = Callable[..., dict[str, Any]]


def build_app(emulator: Emulator, **middleware: Any) -> Starlette:
    async def vault(request: Request) -> JSONResponse:
        token = await bearer_token(VAULT)(request)
        provider = await token_provider()(request)
        assert provider is get_token_provider(request) is request.state.managed_identity
        return JSONResponse({"aud": emulator.verify(token)["aud"]})

    return Starlette(
        routes=[Route("/vault", vault), readiness_route("/ready")],
        middleware=[Middleware(ManagedIdentityMiddleware, **middleware)],
        exception_handlers={ClientAuthenticationError: credential_error_handler},
    )


async def test_starlette_handlers_and_readiness(
    emulator: Emulator, credential_options: Options
) -> None:
    app = build_app(emulator, credential_options=credential_options(), warmup_scopes=[VAULT])
    async with running(app) as client:
        assert (await client.get("/vault")).json() == {"aud": "https://vault.azure.net"}
        probe = await client.get("/ready")
        assert probe.status_code == 200
        assert probe.headers["cache-control"] == "no-store"
        assert probe.json()["ready"] is True
        assert probe.json()["last_error"] is None
        assert_no_secret(emulator, probe.text)
    assert emulator.issued == 1


async def test_no_source_is_not_ready_and_a_503_problem(
    emulator: Emulator, credential_options: Options
) -> None:
    app = build_app(
        emulator, credential_options=credential_options(environ=no_source_environ(emulator))
    )
    async with running(app) as client:
        problem = await client.get("/vault")
        probe = await client.get("/ready")
    assert problem.status_code == 503
    assert problem.json()["code"] == "managed_identity_unavailable"
    assert probe.status_code == 503
    assert probe.json()["ready"] is False
    assert probe.json()["source"] is None
    assert probe.json()["last_error"]["type"] == "CredentialUnavailableError"


async def test_without_the_middleware_helpers_say_what_is_missing() -> None:
    async def handler(request: Request) -> JSONResponse:
        with pytest.raises(RuntimeError, match=r"add ManagedIdentityMiddleware\(state_name='x'\)"):
            get_token_provider(request, "x")
        with pytest.raises(RuntimeError, match=r"request\.state\.managed_identity holds no token"):
            await bearer_token(VAULT)(request)
        return JSONResponse({})

    async with running(Starlette(routes=[Route("/", handler)])) as client:
        assert (await client.get("/")).status_code == 200


def test_helper_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="scope"):
        bearer_token("two scopes")
    with pytest.raises(ValueError, match="scope"):
        bearer_token(["a", "b"])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="identifier"):
        bearer_token(VAULT, name="not-a-name")
    with pytest.raises(ValueError, match="identifier"):
        token_provider("")
    with pytest.raises(ValueError, match="positive"):
        readiness_route(timeout=0)


async def test_readiness_without_io_follows_the_clock(
    emulator: Emulator, credential_options: Options, clock: FakeClock
) -> None:
    middleware = ManagedIdentityMiddleware(
        Starlette(), credential_options=credential_options(), warmup_scopes=[VAULT]
    )
    provider = middleware.provider
    assert not provider.readiness().ready  # nothing acquired yet
    assert await provider.acquire(provider.warmup_scopes, timeout=5) == {}
    [status] = provider.readiness().scopes
    assert status.expires_in is not None and status.expires_in > 0
    clock.advance(status.expires_in + 1)
    readiness = provider.readiness()
    assert not readiness.ready
    assert readiness.scopes[0].expires_in == pytest.approx(-1)
    assert emulator.issued == 1  # readiness() itself never asks for a token
    report = (await provider.check(timeout=5)).as_dict()  # check() does
    assert report["ready"] is True
    assert emulator.issued == 2
    await middleware.aclose()


def test_problem_details_by_error() -> None:
    from mi_credential import CredentialUnavailableError, TokenRequestError

    unavailable = problem_details(CredentialUnavailableError("no endpoint here"))
    refused = problem_details(TokenRequestError("HTTP 400"), expose_details=True)
    other = problem_details(ClientAuthenticationError(message="quoted body"), expose_details=True)
    assert (unavailable["code"], unavailable["status"]) == ("managed_identity_unavailable", 503)
    assert "no endpoint here" not in unavailable["detail"]
    assert (refused["code"], refused["detail"]) == ("token_unavailable", "HTTP 400")
    assert other["code"] == "authentication_failed"
    assert "quoted body" not in other["detail"]

    class CredentialUnavailableErrorOfAnotherLibrary(ClientAuthenticationError):
        pass

    CredentialUnavailableErrorOfAnotherLibrary.__name__ = "CredentialUnavailableError"
    assert (
        problem_details(CredentialUnavailableErrorOfAnotherLibrary(message="x"))["code"]
        == "managed_identity_unavailable"
    )


class GetTokenOnly:
    """A credential with only ``get_token`` (as azure-core's older protocol), delegating to
    mi-credential, and failing with a message that must not be repeated when told to."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.fail = False

    async def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        if self.fail:
            raise ClientAuthenticationError(message="upstream said: CANARY-91c2")
        return await self.inner.get_token(*scopes, **kwargs)

    async def close(self) -> None:
        return None

    async def __aenter__(self) -> GetTokenOnly:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        return None


async def test_any_azure_core_credential(
    emulator: Emulator, make_credential: CredentialFactory
) -> None:
    credential = GetTokenOnly(make_credential("app_service"))
    provider = ManagedIdentityMiddleware(
        Starlette(), credential=credential, warmup_scopes=[VAULT]
    ).provider
    info = await provider.token_info(VAULT)
    assert emulator.verify(info.token)["aud"] == "https://vault.azure.net"
    readiness = provider.readiness()
    assert (readiness.ready, readiness.source, readiness.credential) == (
        True,
        None,
        "GetTokenOnly",
    )
    credential.fail = True
    with pytest.raises(ClientAuthenticationError):
        await provider.token(VAULT)
    error = provider.readiness().last_error
    assert error is not None
    assert error.message == (
        "ClientAuthenticationError (details withheld: not an mi-credential error)"
    )
