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

from __future__ import annotations

import functools as _functools
import typing as _typing

from . import _starlette
from ._middleware import ManagedIdentityMiddleware
from ._problem import problem_details
from ._provider import ErrorRecord, Readiness, ScopeStatus, TokenProvider
from ._starlette import (
    DEFAULT_READINESS_PATH,
    add_credential_error_handler,
    credential_error_handler,
    get_token_provider,
)
from ._types import DEFAULT_STATE_NAME

if _typing.TYPE_CHECKING:
    from collections.abc import Callable

    _P = _typing.ParamSpec("_P")
    _R = _typing.TypeVar("_R")


def _needs_starlette(helper: Callable[_P, _R]) -> Callable[_P, _R]:
    """``helper``, raising an ImportError that names the extra to install, chained from the
    original, where starlette is missing (the helpers import it when called)."""

    @_functools.wraps(helper)
    def guarded(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return helper(*args, **kwargs)
        except ModuleNotFoundError as exc:
            if (exc.name or "").partition(".")[0] != "starlette":
                raise
            raise ModuleNotFoundError(
                f"mi_credential_asgi.{helper.__name__} needs starlette, which is not installed: "
                "pip install 'mi-credential[starlette]' (or 'mi-credential[fastapi]')",
                name=exc.name,
            ) from exc

    return guarded


bearer_token = _needs_starlette(_starlette.bearer_token)
token_provider = _needs_starlette(_starlette.token_provider)
problem_response = _needs_starlette(_starlette.problem_response)
readiness_route = _needs_starlette(_starlette.readiness_route)
add_readiness_route = _needs_starlette(_starlette.add_readiness_route)

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
