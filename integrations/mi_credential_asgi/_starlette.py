"""Starlette and FastAPI helpers: dependencies, the 503 problem handler, the readiness route.

starlette is an optional dependency: it is imported when a helper is called, never when this
package is imported, so the middleware alone serves any ASGI framework.
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from mi_credential.http import check_scope

from ._problem import PROBLEM_CONTENT_TYPE, PROBLEM_STATUS, problem_details
from ._provider import TokenProvider, describe_error
from ._types import DEFAULT_STATE_NAME

if TYPE_CHECKING:
    from starlette.applications import Starlette
    from starlette.requests import HTTPConnection, Request
    from starlette.responses import Response
    from starlette.routing import Route

_logger = logging.getLogger("mi_credential_asgi")

DEFAULT_READINESS_PATH = "/health/identity"

_NO_STORE = {"Cache-Control": "no-store"}


def get_token_provider(conn: HTTPConnection, name: str = DEFAULT_STATE_NAME) -> TokenProvider:
    """The token provider :class:`ManagedIdentityMiddleware` put in this request's state.

    The Starlette way to reach it with a clear error when the middleware is missing; equivalent
    to ``request.state.managed_identity`` otherwise.

    Args:
        conn: The request (or WebSocket).
        name: The middleware's ``state_name``.

    Returns:
        The provider.

    Raises:
        RuntimeError: No provider is published under ``name``: the middleware is not installed
            around this route, or under another ``state_name``.
    """
    state = conn.scope.get("state")
    provider = state.get(name) if isinstance(state, Mapping) else None
    if not isinstance(provider, TokenProvider):
        raise RuntimeError(
            f"request.state.{name} holds no token provider: add ManagedIdentityMiddleware"
            + ("" if name == DEFAULT_STATE_NAME else f"(state_name={name!r})")
            + " to the application's middleware."
        )
    return provider


def _validate_name(name: object) -> str:
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"name must be the middleware's state_name (an identifier), not {name!r}.")
    return name


def _connection_signature(return_annotation: Any) -> inspect.Signature:
    """A signature FastAPI reads as "inject the request": built from the real class, because
    FastAPI cannot resolve a string annotation naming a lazily imported type."""
    from starlette.requests import HTTPConnection

    parameter = inspect.Parameter(
        "connection", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=HTTPConnection
    )
    return inspect.Signature([parameter], return_annotation=return_annotation)


def bearer_token(
    scope: str, *, name: str = DEFAULT_STATE_NAME
) -> Callable[[HTTPConnection], Awaitable[str]]:
    """A FastAPI dependency that gives the handler a token for ``scope``.

    >>> async def read(token: Annotated[str, Depends(bearer_token(VAULT))]): ...  # doctest: +SKIP

    In Starlette, call it with the request: ``await bearer_token(VAULT)(request)``. The same
    arguments return the same dependency, so FastAPI resolves it once per request.

    Args:
        scope: The scope, such as ``https://vault.azure.net/.default``.
        name: The middleware's ``state_name``.

    Returns:
        An async callable taking the request (or WebSocket) and returning the token.

    Raises:
        ValueError: ``scope`` is not one scope string, or ``name`` is not an identifier.
    """
    check_scope(scope)
    return _bearer_token(scope, _validate_name(name))


@functools.lru_cache(maxsize=256)
def _bearer_token(scope: str, name: str) -> Callable[[HTTPConnection], Awaitable[str]]:
    async def dependency(connection: HTTPConnection) -> str:
        return await get_token_provider(connection, name).token(scope)

    dependency.__signature__ = _connection_signature(str)  # type: ignore[attr-defined]
    return dependency


def token_provider(
    name: str = DEFAULT_STATE_NAME,
) -> Callable[[HTTPConnection], Awaitable[TokenProvider]]:
    """A FastAPI dependency that gives the handler the :class:`TokenProvider`.

    >>> Identity = Annotated[TokenProvider, Depends(token_provider())]  # doctest: +SKIP

    Args:
        name: The middleware's ``state_name``.

    Returns:
        An async callable taking the request (or WebSocket) and returning the provider.

    Raises:
        ValueError: ``name`` is not an identifier.
    """
    return _token_provider(_validate_name(name))


@functools.lru_cache(maxsize=256)
def _token_provider(name: str) -> Callable[[HTTPConnection], Awaitable[TokenProvider]]:
    async def dependency(connection: HTTPConnection) -> TokenProvider:
        return get_token_provider(connection, name)

    dependency.__signature__ = _connection_signature(TokenProvider)  # type: ignore[attr-defined]
    return dependency


def problem_response(exc: BaseException, *, expose_details: bool = False) -> Response:
    """A 503 ``application/problem+json`` response for an authentication failure.

    Args:
        exc: The error.
        expose_details: See :func:`problem_details`.

    Returns:
        The response, with ``Cache-Control: no-store``.
    """
    from starlette.responses import Response

    body = json.dumps(problem_details(exc, expose_details=expose_details)).encode()
    return Response(
        body, status_code=PROBLEM_STATUS, media_type=PROBLEM_CONTENT_TYPE, headers=_NO_STORE
    )


def _log_failure(request: Request, exc: BaseException) -> None:
    _logger.warning(
        "%s %s answered %d: %s",
        request.method,
        request.url.path,
        PROBLEM_STATUS,
        describe_error(exc),
    )


async def credential_error_handler(request: Request, exc: Exception) -> Response:
    """An exception handler answering an authentication failure with a 503 problem response.

    Register it for :class:`~azure.core.exceptions.ClientAuthenticationError` (which covers
    every mi-credential error, azure-identity's, and the Azure SDK's 401/403 errors), or use
    :func:`add_credential_error_handler`. The failure is logged at WARNING, without a traceback
    and without the message of errors that are not mi-credential's own.

    Args:
        request: The request.
        exc: The error.

    Returns:
        The 503 response (see :func:`problem_details`).
    """
    _log_failure(request, exc)
    return problem_response(exc)


def add_credential_error_handler(app: Starlette, *, expose_details: bool = False) -> None:
    """Answer authentication failures raised in handlers with a 503 problem response.

    Works for Starlette and FastAPI applications (FastAPI's ``app`` is a Starlette one).

    Args:
        app: The application.
        expose_details: See :func:`problem_details`.
    """
    from azure.core.exceptions import ClientAuthenticationError

    if not expose_details:
        app.add_exception_handler(ClientAuthenticationError, credential_error_handler)
        return

    async def handler(request: Request, exc: Exception) -> Response:
        _log_failure(request, exc)
        return problem_response(exc, expose_details=True)

    app.add_exception_handler(ClientAuthenticationError, handler)


def readiness_route(
    path: str = DEFAULT_READINESS_PATH, *, name: str = DEFAULT_STATE_NAME, timeout: float = 0.5
) -> Route:
    """A route answering health probes with the managed identity's :class:`Readiness`.

    ``GET`` (and ``HEAD``) answer 200 when ready and 503 otherwise, with the JSON of
    :meth:`Readiness.as_dict`. Each probe runs :meth:`TokenProvider.check`: a fresh token costs
    no I/O, and a missing one is acquired (waiting at most ``timeout`` seconds).

    Args:
        path: The route's path.
        name: The middleware's ``state_name``.
        timeout: Seconds a probe waits for an acquisition; keep it below the probe's timeout.

    Returns:
        A Starlette route (not in the OpenAPI schema), for ``routes=[...]``.

    Raises:
        ValueError: ``timeout`` is not positive.
    """
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ValueError(f"timeout must be a positive number of seconds, not {timeout!r}.")

    async def readiness(request: Request) -> Response:
        report = await get_token_provider(request, name).check(timeout=timeout)
        return JSONResponse(
            report.as_dict(), status_code=200 if report.ready else 503, headers=_NO_STORE
        )

    return Route(
        path,
        readiness,
        methods=["GET"],
        name="managed_identity_readiness",
        include_in_schema=False,
    )


def add_readiness_route(
    app: Starlette,
    path: str = DEFAULT_READINESS_PATH,
    *,
    name: str = DEFAULT_STATE_NAME,
    timeout: float = 0.5,
) -> None:
    """Mount :func:`readiness_route` on a Starlette or FastAPI application.

    Args:
        app: The application.
        path: The route's path.
        name: The middleware's ``state_name``.
        timeout: Seconds a probe waits for an acquisition.

    Raises:
        ValueError: ``timeout`` is not positive.
    """
    app.router.routes.append(readiness_route(path, name=name, timeout=timeout))
