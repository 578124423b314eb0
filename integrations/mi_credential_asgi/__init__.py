"""Managed identity for Starlette, FastAPI and any ASGI application.

:class:`ManagedIdentityMiddleware` is pure ASGI and needs no framework: it owns one credential
per application (created and warmed at startup, closed at shutdown) and gives every request a
:class:`TokenProvider` as ``request.state.managed_identity``::

    app = Starlette(routes=..., middleware=[
        Middleware(ManagedIdentityMiddleware, warmup_scopes=[VAULT], strict=True),
    ])

    async def handler(request):
        token = await request.state.managed_identity.token(VAULT)

The helpers import starlette when called: FastAPI dependencies (:func:`bearer_token`,
:func:`token_provider`), a 503 ``application/problem+json`` answer to authentication failures
(:func:`add_credential_error_handler`) and a readiness route for health probes
(:func:`add_readiness_route`).
"""

from ._middleware import ManagedIdentityMiddleware
from ._problem import problem_details
from ._provider import ErrorRecord, Readiness, ScopeStatus, TokenProvider
from ._starlette import (
    DEFAULT_READINESS_PATH,
    add_credential_error_handler,
    add_readiness_route,
    bearer_token,
    credential_error_handler,
    get_token_provider,
    problem_response,
    readiness_route,
    token_provider,
)
from ._types import DEFAULT_STATE_NAME

__all__ = [
    "DEFAULT_READINESS_PATH",
    "DEFAULT_STATE_NAME",
    "ErrorRecord",
    "ManagedIdentityMiddleware",
    "Readiness",
    "ScopeStatus",
    "TokenProvider",
    "add_credential_error_handler",
    "add_readiness_route",
    "bearer_token",
    "credential_error_handler",
    "get_token_provider",
    "problem_details",
    "problem_response",
    "readiness_route",
    "token_provider",
]
