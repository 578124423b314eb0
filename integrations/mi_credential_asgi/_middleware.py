"""The pure ASGI middleware: one credential per application, warmed at startup, closed at
shutdown, and a token provider in every request's state.

Pure ASGI rather than Starlette's ``BaseHTTPMiddleware``: that one runs the application in a
separate task group per request, which costs time and cuts context variables (and with them the
OpenTelemetry span a token acquisition should be a child of).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from azure.core.credentials_async import AsyncTokenCredential

from mi_credential import ManagedIdentityCredential

from ._provider import TokenProvider, describe_error
from ._types import DEFAULT_STATE_NAME, ASGIApp, Message, Receive, Scope, Send

_logger = logging.getLogger("mi_credential_asgi")


class ManagedIdentityMiddleware:
    """Gives an ASGI application a managed identity.

    - Every HTTP and WebSocket request finds a :class:`TokenProvider` in its scope's state, so a
      Starlette or FastAPI handler writes
      ``await request.state.managed_identity.token("https://vault.azure.net/.default")``.
      Nothing else happens per request.
    - On ``lifespan.startup``, after the application's own startup, tokens for
      ``warmup_scopes`` are acquired under ``warmup_timeout``. If that fails, ``strict=True``
      shuts the application down again and reports the startup as failed with the reason;
      otherwise the failure is logged and tokens are acquired when first asked for.
    - On ``lifespan.shutdown``, after the application's own shutdown, the credential the
      middleware created is closed (a credential passed in is left open). A new startup, as
      test clients run on the same application, creates a new credential.
    - Without lifespan (a server run with it off), the provider works the same and tokens are
      acquired on first use; close the middleware's credential with :meth:`aclose`.

    Args:
        app: The ASGI application.
        credential: The credential to use, which the middleware never closes. By default it
            creates a :class:`~mi_credential.ManagedIdentityCredential`.
        credential_options: Keyword arguments for the credential the middleware creates
            (``client_id``, ``identity_config``, ``timeout``, ``tracer_provider``...).
        warmup_scopes: Scopes to acquire at startup, which readiness then requires.
        strict: Fail startup if warm-up fails (default: log and continue).
        warmup_timeout: Seconds the warm-up may take in total.
        state_name: The attribute of ``request.state`` the provider is published as.
        clock: Wall clock for readiness data (default: ``credential_options["clock"]``, else
            :func:`time.time`).

    Raises:
        ValueError: Both ``credential`` and ``credential_options`` are given, a scope is not a
            scope string (a single string instead of a list is refused), ``warmup_timeout`` is
            not positive, ``state_name`` is not an identifier, or the credential options are
            invalid (see :class:`~mi_credential.ManagedIdentityCredential`).
        TypeError: An unknown credential option, or a ``credential`` with neither
            ``get_token_info`` nor ``get_token``.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        credential: AsyncTokenCredential | None = None,
        credential_options: Mapping[str, Any] | None = None,
        warmup_scopes: Sequence[str] = (),
        strict: bool = False,
        warmup_timeout: float = 30.0,
        state_name: str = DEFAULT_STATE_NAME,
        clock: Callable[[], float] | None = None,
    ) -> None:
        if credential is not None and credential_options is not None:
            raise ValueError(
                "Pass either credential (used as is) or credential_options (for the credential "
                "the middleware creates), not both."
            )
        if isinstance(warmup_scopes, str):
            raise ValueError(
                f"warmup_scopes must be a list of scopes, not the string {warmup_scopes!r}."
            )
        if isinstance(warmup_timeout, bool) or not isinstance(warmup_timeout, (int, float)):
            raise ValueError(f"warmup_timeout must be a number of seconds, not {warmup_timeout!r}.")
        if not warmup_timeout > 0:
            raise ValueError(f"warmup_timeout must be positive, not {warmup_timeout!r}.")
        if not isinstance(state_name, str) or not state_name.isidentifier():
            raise ValueError(
                f"state_name must be a Python identifier (it is an attribute of request.state), "
                f"not {state_name!r}."
            )
        self.app = app
        self._options: dict[str, Any] = dict(credential_options or {})
        self._owned = credential is None
        self._open = True
        self._strict = bool(strict)
        self._warmup_timeout = float(warmup_timeout)
        self._state_name = state_name
        if credential is None:
            credential = self._create_credential()
        default_clock: Callable[[], float] = self._options.get("clock") or time.time
        self._provider = TokenProvider(
            credential, warmup_scopes=warmup_scopes, clock=clock or default_clock
        )

    @property
    def provider(self) -> TokenProvider:
        """The token provider every request finds in its state."""
        return self._provider

    @property
    def credential(self) -> AsyncTokenCredential:
        """The credential in use."""
        return self._provider.credential

    async def aclose(self) -> None:
        """Close the credential the middleware created (not one passed in). Lifespan shutdown
        does this; call it yourself when the server runs without lifespan. Idempotent."""
        self._provider.cancel_pending()
        if self._owned and self._open:
            self._open = False
            await self._provider.credential.close()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http" or kind == "websocket":
            # The server gives each request its own (shallow) copy of the lifespan state, or
            # none at all when it runs without lifespan; either way this request's dict is ours
            # to add to, and nothing else is done until a handler asks for a token.
            if "state" in scope:
                scope["state"][self._state_name] = self._provider
            else:
                scope["state"] = {self._state_name: self._provider}
        elif kind == "lifespan":
            await self._lifespan(scope, receive, send)
            return
        await self.app(scope, receive, send)

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the application's lifespan with warm-up after its startup and the credential's
        close after its shutdown.

        A strict warm-up failure is not reported straight away: the application has started,
        so it is first told to shut down (its next ``receive`` gets ``lifespan.shutdown``), and
        only when its shutdown is done does the server get ``lifespan.startup.failed``.
        """
        abort: list[str] = []

        async def receive_wrapper() -> Message:
            if abort:
                return {"type": "lifespan.shutdown"}
            message = await receive()
            if message["type"] == "lifespan.startup":
                self._reopen()
            return message

        async def send_wrapper(message: Message) -> None:
            kind = message["type"]
            if kind == "lifespan.startup.complete":
                failure = await self._warm_up()
                if failure is not None:
                    abort.append(failure)
                    return
            elif kind == "lifespan.startup.failed":
                await self.aclose()
            elif kind in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
                await self.aclose()
                if abort:
                    text = abort[0]
                    if kind == "lifespan.shutdown.failed" and message.get("message"):
                        text += f" The application's shutdown failed too: {message['message']}"
                    await send({"type": "lifespan.startup.failed", "message": text})
                    return
            await send(message)

        await self.app(scope, receive_wrapper, send_wrapper)

    async def _warm_up(self) -> str | None:
        """Acquire the warm-up scopes. Returns the startup failure message in strict mode."""
        provider = self._provider
        scopes = provider.warmup_scopes
        if not scopes:
            return None
        failures = await provider.acquire(scopes, timeout=self._warmup_timeout)
        if not failures:
            readiness = provider.readiness()
            _logger.info(
                "Managed identity warm-up: tokens for %d scope(s) acquired (%s)",
                len(scopes),
                readiness.source or readiness.credential,
            )
            return None
        reasons = "; ".join(f"{scope}: {describe_error(exc)}" for scope, exc in failures.items())
        if self._strict:
            message = f"Managed identity warm-up failed, so startup is aborted (strict): {reasons}"
            _logger.error("%s", message)
            return message
        _logger.warning(
            "Managed identity warm-up failed; startup continues and tokens are acquired when "
            "first asked for: %s",
            reasons,
        )
        return None

    def _create_credential(self) -> ManagedIdentityCredential:
        return ManagedIdentityCredential(**self._options)

    def _reopen(self) -> None:
        """A second startup of the same application gets a new credential: the previous one
        was closed at the previous shutdown and cannot be used again."""
        if self._owned and not self._open:
            self._provider._reset(self._create_credential())
            self._open = True
