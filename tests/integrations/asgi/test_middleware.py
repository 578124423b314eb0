"""ManagedIdentityMiddleware in real Starlette applications against the emulator: the provider in
request state, warm-up at startup, close at shutdown, strict and lenient failures, no lifespan."""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from mi_credential import (
    CredentialUnavailableError,
    ManagedIdentityCredential,
    ManagedIdentityError,
    TokenRequestError,
)
from mi_credential.emulator import Emulator, Fault
from mi_credential_asgi import ManagedIdentityMiddleware, TokenProvider
from tests.conftest import CredentialFactory

from .conftest import (
    STORAGE,
    VAULT,
    Lifespan,
    StartupFailed,
    assert_no_secret,
    no_source_environ,
    running,
)

Options = Callable[..., dict[str, Any]]


def build_app(
    emulator: Emulator, events: list[str] | None = None, **middleware: Any
) -> tuple[ManagedIdentityMiddleware, Starlette]:
    """A Starlette application with a lifespan of its own, wrapped in the middleware."""
    events = [] if events is None else events
    holder: list[ManagedIdentityMiddleware] = []

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        events.append(f"app startup ({len(emulator.requests)} token requests so far)")
        yield
        # The credential must still be open during the application's own shutdown.
        events.append(f"app shutdown (credential closed: {'closed' in repr(holder[0].credential)})")

    async def vault(request: Request) -> JSONResponse:
        token = await request.state.managed_identity.token(VAULT)
        claims = emulator.verify(token, audience="https://vault.azure.net")
        return JSONResponse({"aud": claims["aud"]})

    async def plain(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    async def provider(request: Request) -> JSONResponse:
        return JSONResponse({"same": request.state.managed_identity is holder[0].provider})

    app = Starlette(
        routes=[Route("/vault", vault), Route("/plain", plain), Route("/provider", provider)],
        lifespan=lifespan,
    )
    wrapped = ManagedIdentityMiddleware(app, **middleware)
    holder.append(wrapped)
    return wrapped, app


async def assert_closed(credential: Any) -> None:
    with pytest.raises(ManagedIdentityError, match="closed"):
        await credential.get_token(VAULT)


async def test_warms_up_after_the_app_starts_and_closes_after_it_shuts_down(
    emulator: Emulator, credential_options: Options
) -> None:
    events: list[str] = []
    middleware, _ = build_app(
        emulator,
        events,
        credential_options=credential_options(),
        warmup_scopes=[VAULT, STORAGE],
        strict=True,
    )
    async with running(middleware) as client:
        assert events == ["app startup (0 token requests so far)"]
        assert sorted(str(r.param("resource")) for r in emulator.requests) == [
            "https://storage.azure.com",
            "https://vault.azure.net",
        ]
        response = await client.get("/vault")
        assert response.json() == {"aud": "https://vault.azure.net"}
        assert emulator.issued == 2  # the handler was served the warm token
        readiness = middleware.provider.readiness()
        assert readiness.ready and readiness.source == "app_service"
    assert events[-1] == "app shutdown (credential closed: False)"
    await assert_closed(middleware.credential)


async def test_a_request_that_asks_for_no_token_costs_no_token_request(
    emulator: Emulator, credential_options: Options
) -> None:
    middleware, _ = build_app(emulator, credential_options=credential_options())
    async with running(middleware) as client:
        for _ in range(3):
            assert (await client.get("/plain")).text == "ok"
        assert (await client.get("/provider")).json() == {"same": True}
    assert emulator.requests == []
    assert middleware.provider.readiness().scopes == ()


@pytest.mark.parametrize("lifespan", [True, False], ids=["lifespan-state", "no-lifespan"])
async def test_the_provider_is_in_request_state_with_or_without_lifespan_state(
    emulator: Emulator, credential_options: Options, lifespan: bool
) -> None:
    middleware, _ = build_app(emulator, credential_options=credential_options())
    async with running(middleware, lifespan=lifespan) as client:
        assert (await client.get("/provider")).json() == {"same": True}
        assert (await client.get("/vault")).json() == {"aud": "https://vault.azure.net"}
    await middleware.aclose()


async def test_without_lifespan_tokens_are_acquired_on_first_use(
    emulator: Emulator, credential_options: Options
) -> None:
    middleware, _ = build_app(
        emulator, credential_options=credential_options(), warmup_scopes=[VAULT, STORAGE]
    )
    async with running(middleware, lifespan=False) as client:
        assert emulator.requests == []  # nothing warmed: the server never said startup
        assert (await client.get("/vault")).status_code == 200
        assert (await client.get("/vault")).status_code == 200
    assert [r.param("resource") for r in emulator.requests] == ["https://vault.azure.net"]
    await middleware.aclose()
    await middleware.aclose()  # idempotent
    await assert_closed(middleware.credential)


async def test_strict_warm_up_failure_shuts_the_app_down_and_fails_startup(
    emulator: Emulator, credential_options: Options
) -> None:
    events: list[str] = []
    middleware, _ = build_app(
        emulator,
        events,
        credential_options=credential_options(environ=no_source_environ(emulator)),
        warmup_scopes=[VAULT],
        strict=True,
    )
    manager = Lifespan(middleware)
    with pytest.raises(StartupFailed) as failure:
        await manager.startup()
    message = failure.value.message
    assert message.startswith("Managed identity warm-up failed, so startup is aborted (strict)")
    assert f"{VAULT}: CredentialUnavailableError: No managed identity endpoint found" in message
    # The application had started, so it was shut down before startup was reported failed.
    assert [m["type"] for m in manager.sent] == ["lifespan.startup.failed"]
    assert events == [
        "app startup (0 token requests so far)",
        "app shutdown (credential closed: False)",
    ]
    await assert_closed(middleware.credential)


async def test_strict_warm_up_failure_when_the_endpoint_refuses(
    emulator: Emulator, credential_options: Options
) -> None:
    emulator.add_fault(Fault.status_code(500, source="app_service", times=None))
    middleware, _ = build_app(
        emulator, credential_options=credential_options(), warmup_scopes=[VAULT], strict=True
    )
    with pytest.raises(StartupFailed) as failure:
        await Lifespan(middleware).startup()
    assert f"{VAULT}: TokenRequestError:" in failure.value.message
    assert "HTTP 500" in failure.value.message or "500" in failure.value.message
    assert_no_secret(emulator, failure.value.message)
    await assert_closed(middleware.credential)


async def test_strict_warm_up_has_a_deadline(
    emulator: Emulator, credential_options: Options
) -> None:
    emulator.add_fault(Fault.hang(source="app_service"))
    middleware, _ = build_app(
        emulator,
        credential_options=credential_options(),
        warmup_scopes=[VAULT],
        strict=True,
        warmup_timeout=0.2,
    )
    with pytest.raises(StartupFailed) as failure:
        await Lifespan(middleware).startup()
    assert f"{VAULT}: TimeoutError: no token within 0.2 s" in failure.value.message
    await assert_closed(middleware.credential)  # which also ended the hanging acquisition


async def test_lenient_warm_up_failure_logs_and_continues(
    emulator: Emulator, credential_options: Options, caplog: pytest.LogCaptureFixture
) -> None:
    emulator.add_fault(Fault.status_code(500, source="app_service", times=None))
    middleware, _ = build_app(
        emulator, credential_options=credential_options(), warmup_scopes=[VAULT]
    )
    async with running(middleware) as client:
        warnings = [
            r.getMessage()
            for r in caplog.records
            if r.name == "mi_credential_asgi" and r.levelno == logging.WARNING
        ]
        assert len(warnings) == 1
        assert warnings[0].startswith(
            "Managed identity warm-up failed; startup continues and tokens are acquired when "
            f"first asked for: {VAULT}: TokenRequestError:"
        )
        readiness = middleware.provider.readiness()
        assert not readiness.ready
        assert readiness.last_error is not None
        assert readiness.last_error.type == "TokenRequestError"

        emulator.faults.clear()  # the endpoint recovers
        assert (await client.get("/vault")).json() == {"aud": "https://vault.azure.net"}
        assert middleware.provider.readiness().ready


async def test_a_credential_passed_in_is_used_and_never_closed(
    emulator: Emulator, make_credential: CredentialFactory
) -> None:
    credential = make_credential("app_service")
    middleware, _ = build_app(emulator, credential=credential, warmup_scopes=[VAULT])
    async with running(middleware) as client:
        assert middleware.credential is credential
        assert (await client.get("/vault")).status_code == 200
    await middleware.aclose()
    token = await credential.get_token(VAULT)  # still open, still cached
    assert emulator.verify(token.token)["aud"] == "https://vault.azure.net"
    assert emulator.issued == 1


async def test_each_lifespan_gets_a_new_credential(
    emulator: Emulator, credential_options: Options
) -> None:
    middleware, _ = build_app(
        emulator, credential_options=credential_options(), warmup_scopes=[VAULT]
    )
    async with running(middleware) as client:
        first = middleware.credential
        assert (await client.get("/vault")).status_code == 200
    async with running(middleware) as client:
        second = middleware.credential
        assert second is not first
        assert (await client.get("/vault")).status_code == 200
    await assert_closed(first)
    await assert_closed(second)
    assert emulator.issued == 2  # one warm-up per lifespan


async def test_the_apps_own_startup_failure_is_passed_on_and_the_credential_closed(
    credential_options: Options,
) -> None:
    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        raise RuntimeError("database unreachable")
        yield  # type: ignore[unreachable]  # pragma: no cover

    middleware = ManagedIdentityMiddleware(
        Starlette(lifespan=lifespan),
        credential_options=credential_options(),
        warmup_scopes=[VAULT],
    )
    with pytest.raises(StartupFailed, match="database unreachable"):
        await Lifespan(middleware).startup()
    await assert_closed(middleware.credential)


async def test_several_identities_under_their_own_names(
    emulator: Emulator, credential_options: Options
) -> None:
    user = emulator.user_identities[0]

    async def both(request: Request) -> JSONResponse:
        system = await request.state.system_identity.token(VAULT)
        assigned = await request.state.user_identity.token(VAULT)
        return JSONResponse(
            {
                "system": emulator.verify(system)["oid"],
                "user": emulator.verify(assigned)["oid"],
            }
        )

    app = Starlette(
        routes=[Route("/", both)],
        middleware=[
            Middleware(
                ManagedIdentityMiddleware,
                credential_options=credential_options("imds"),
                state_name="system_identity",
            ),
            Middleware(
                ManagedIdentityMiddleware,
                credential_options=credential_options("imds", client_id=user.client_id),
                state_name="user_identity",
            ),
        ],
    )
    async with running(app) as client:
        assert (await client.get("/")).json() == {
            "system": emulator.system_identity.object_id if emulator.system_identity else None,
            "user": user.object_id,
        }


async def test_a_bad_scope_in_a_handler_is_a_value_error(
    emulator: Emulator, credential_options: Options
) -> None:
    middleware = ManagedIdentityMiddleware(
        Starlette(), credential_options=credential_options()
    )
    provider = middleware.provider
    for bad in ([VAULT, STORAGE], "", "two scopes", None):
        with pytest.raises(ValueError, match="scope"):
            await provider.token(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="scope"):
        await provider.token_info([VAULT])  # type: ignore[arg-type]
    assert emulator.requests == []
    await middleware.aclose()


async def test_non_http_scopes_pass_through_untouched_and_websockets_get_the_provider(
    credential_options: Options,
) -> None:
    seen: list[dict[str, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(dict(scope))

    async def receive() -> dict[str, Any]:
        raise AssertionError("not called")  # pragma: no cover

    async def send(message: Any) -> None:
        raise AssertionError("not called")  # pragma: no cover

    middleware = ManagedIdentityMiddleware(app, credential_options=credential_options())
    await middleware({"type": "custom.protocol"}, receive, send)
    await middleware({"type": "websocket", "path": "/ws"}, receive, send)
    await middleware({"type": "http", "state": {"db": "pool"}}, receive, send)
    assert seen[0] == {"type": "custom.protocol"}
    assert seen[1]["state"] == {"managed_identity": middleware.provider}
    assert seen[2]["state"] == {"db": "pool", "managed_identity": middleware.provider}
    await middleware.aclose()


async def test_context_variables_reach_the_handler(
    emulator: Emulator, credential_options: Options
) -> None:
    request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id")

    async def handler(request: Request) -> JSONResponse:
        await request.state.managed_identity.token(VAULT)
        return JSONResponse({"request_id": request_id.get("lost")})

    inner = ManagedIdentityMiddleware(
        Starlette(routes=[Route("/", handler)]), credential_options=credential_options()
    )

    async def outer(scope: Any, receive: Any, send: Any) -> None:
        request_id.set("r-42")
        await inner(scope, receive, send)

    async with running(outer) as client:
        assert (await client.get("/")).json() == {"request_id": "r-42"}


def test_configuration_errors_are_value_errors(
    make_credential: CredentialFactory, credential_options: Options
) -> None:
    app = Starlette()
    given = {"credential": make_credential("app_service")}
    options = credential_options()
    cases: list[tuple[dict[str, Any], str]] = [
        ({**given, "credential_options": options}, "either credential"),
        ({**given, "warmup_scopes": VAULT}, "list of scopes, not the string"),
        ({**given, "warmup_scopes": [VAULT, "two words"]}, "whitespace"),
        ({**given, "warmup_scopes": [""]}, "non-empty string"),
        ({**given, "warmup_timeout": 0}, "positive"),
        ({**given, "warmup_timeout": "30"}, "number of seconds"),
        ({**given, "state_name": "managed-identity"}, "identifier"),
        ({"credential_options": {**options, "timeout": -1}}, "timeout must be a positive"),
        (
            {"credential_options": {**options, "client_id": "a", "identity_config": {"object_id": "b"}}},
            "must not contain",
        ),
    ]
    for kwargs, match in cases:
        with pytest.raises(ValueError, match=match):
            ManagedIdentityMiddleware(app, **kwargs)
    with pytest.raises(TypeError, match="unexpected keyword"):
        ManagedIdentityMiddleware(app, credential_options={**options, "not_an_option": 1})


async def test_the_provider_and_middleware_reprs_hold_no_secret(
    emulator: Emulator, credential_options: Options
) -> None:
    middleware, _ = build_app(
        emulator, credential_options=credential_options(), warmup_scopes=[VAULT]
    )
    async with running(middleware):
        provider = middleware.provider
        assert isinstance(provider, TokenProvider)
        text = repr(provider) + repr(provider.readiness()) + repr(provider.credential)
        assert "ManagedIdentityCredential" in text
        assert_no_secret(emulator, text)
        assert emulator.issued == 1


async def test_the_credential_is_an_mi_credential_by_default(credential_options: Options) -> None:
    middleware = ManagedIdentityMiddleware(Starlette(), credential_options=credential_options())
    assert isinstance(middleware.credential, ManagedIdentityCredential)
    assert middleware.credential.source is not None
    assert middleware.credential.source.value == "app_service"
    await middleware.aclose()


async def test_a_warm_up_past_its_deadline_finishes_in_the_background(
    emulator: Emulator, credential_options: Options
) -> None:
    """Lenient mode: a warm-up that outlives its deadline finishes in the background, and the
    first handler that asks gets its result."""
    emulator.add_fault(Fault.slow(0.3, source="app_service"))
    middleware, _ = build_app(
        emulator,
        credential_options=credential_options(),
        warmup_scopes=[VAULT],
        warmup_timeout=0.05,
    )
    async with running(middleware) as client:
        assert middleware.provider.readiness().last_error is not None
        assert (await client.get("/vault")).status_code == 200
    assert len(emulator.requests_for("app_service")) == 1


async def test_errors_reach_the_handler_typed(
    emulator: Emulator, credential_options: Options
) -> None:
    emulator.add_fault(Fault.status_code(403, source="app_service", times=None))
    middleware = ManagedIdentityMiddleware(Starlette(), credential_options=credential_options())
    unavailable = ManagedIdentityMiddleware(
        Starlette(), credential_options=credential_options(environ=no_source_environ(emulator))
    )
    with pytest.raises(TokenRequestError) as failure:
        await middleware.provider.token(VAULT)
    with pytest.raises(CredentialUnavailableError):
        await unavailable.provider.token(VAULT)
    assert_no_secret(emulator, str(failure.value))
    await middleware.aclose()
    await unavailable.aclose()


async def test_readiness_shows_the_acquisitions_real_error_not_its_own_timeout(
    emulator: Emulator, credential_options: Options
) -> None:
    """A probe that stops waiting records a timeout; the acquisition goes on, and its real
    failure replaces the timeout; later probes that time out again do not hide it."""
    slow_refusal = Fault.status_code(403, source="app_service", times=None)
    slow_refusal.delay = 0.2
    emulator.add_fault(slow_refusal)
    provider = TokenProvider(
        ManagedIdentityCredential(**credential_options()), warmup_scopes=[VAULT]
    )
    first = (await provider.check(timeout=0.01)).as_dict()["last_error"]
    assert first["type"] == "TimeoutError"
    await emulator.wait_for_responses(1)  # the acquisition went on, and was refused
    for _ in range(1000):  # until the credential has read the refusal (loop steps, no time)
        last = provider.readiness().last_error
        if last is not None and last.type != "TimeoutError":
            break
        await asyncio.sleep(0)
    assert last is not None and last.type == "TokenRequestError"
    again = (await provider.check(timeout=0.01)).as_dict()
    assert again["ready"] is False
    assert again["last_error"]["type"] == "TokenRequestError"
    assert "HTTP 403" in again["last_error"]["message"]
    provider.cancel_pending()
    await provider.credential.close()
