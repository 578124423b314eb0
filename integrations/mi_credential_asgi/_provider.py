"""The object request handlers get their tokens from, and the readiness data it keeps."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from azure.core.credentials import AccessTokenInfo, TokenRequestOptions
from azure.core.credentials_async import AsyncTokenCredential
from azure.core.exceptions import ClientAuthenticationError

from mi_credential import ManagedIdentityCredential, ManagedIdentityError
from mi_credential.http import TokenAdapter, check_scope

_MAX_TRACKED_SCOPES = 256
"""Readiness keeps the expiry of at most this many distinct scopes (a bound, should a handler
build scopes from request data); the credential's own cache is unaffected."""


def describe_error(exc: BaseException) -> str:
    """Text about ``exc`` that is safe to log or show.

    mi-credential's own errors are written to be shown: they never contain a token, a secret
    header or a raw response body. Other credentials' errors may quote response bodies, so only
    their type is given.
    """
    if isinstance(exc, (ManagedIdentityError, TimeoutError)):
        return f"{type(exc).__name__}: {exc}"
    return f"{type(exc).__name__} (details withheld: not an mi-credential error)"


@dataclass(frozen=True)
class ScopeStatus:
    """What is known about the token of one scope.

    Attributes:
        scope: The scope, as handlers ask for it.
        expires_in: Seconds until the last token obtained for it expires (negative once it has
            expired), or ``None`` if no token was obtained yet.
        warm_up: Whether it is one of the scopes warmed at startup, which readiness requires.
    """

    scope: str
    expires_in: float | None
    warm_up: bool


@dataclass(frozen=True)
class ErrorRecord:
    """The last failure to obtain a token.

    Attributes:
        scope: The scope that was asked for.
        type: The exception's class name.
        message: A description safe to show (see :func:`describe_error`).
        age: Seconds since it happened.
    """

    scope: str
    type: str
    message: str
    age: float


@dataclass(frozen=True)
class Readiness:
    """Whether the application's managed identity can serve the tokens it needs.

    Attributes:
        ready: The credential found a managed identity source, and every warm-up scope has an
            unexpired token.
        source: The hosting source (``"imds"``, ``"app_service"``, ...), ``None`` if none was
            detected or the credential is not an mi-credential one.
        credential: The credential's class name.
        scopes: Every scope asked for so far, warm-up scopes first.
        last_error: The last failure, if any (kept after later successes; see its ``age``).
    """

    ready: bool
    source: str | None
    credential: str
    scopes: tuple[ScopeStatus, ...]
    last_error: ErrorRecord | None

    def as_dict(self) -> dict[str, Any]:
        """A JSON-serialisable form, as the readiness route returns it.

        Returns:
            ``ready``, ``source``, ``credential``, ``scopes`` (a list of ``scope``,
            ``expires_in`` in seconds rounded to milliseconds, ``warm_up``) and ``last_error``.
        """
        return {
            "ready": self.ready,
            "source": self.source,
            "credential": self.credential,
            "scopes": [
                {
                    "scope": status.scope,
                    "expires_in": None
                    if status.expires_in is None
                    else round(status.expires_in, 3),
                    "warm_up": status.warm_up,
                }
                for status in self.scopes
            ],
            "last_error": None
            if self.last_error is None
            else {
                "scope": self.last_error.scope,
                "type": self.last_error.type,
                "message": self.last_error.message,
                "age": round(self.last_error.age, 3),
            },
        }


class TokenProvider:
    """Tokens for request handlers, from the application's one credential.

    :class:`ManagedIdentityMiddleware` publishes one provider as ``request.state.<name>`` (by
    default ``request.state.managed_identity``). It holds no per-request state: a request that
    never asks for a token costs nothing here. Each call goes to the credential, whose cache
    answers without I/O while the token is fresh; the provider only notes the expiry and the
    last failure, for :meth:`readiness`.

    Args:
        credential: The credential tokens come from: its ``get_token_info`` if it has one,
            else its ``get_token``.
        warmup_scopes: The scopes the application needs; :meth:`readiness` requires a token for
            each, and :meth:`check` acquires any that is missing.
        clock: Wall clock, epoch seconds, to compute times to expiry.

    Raises:
        TypeError: ``credential`` has neither ``get_token_info`` nor ``get_token``.
        ValueError: A warm-up scope is not a scope (:func:`mi_credential.http.check_scope`).
    """

    __slots__ = (
        "_clock",
        "_credential",
        "_expiries",
        "_failing",
        "_last_error",
        "_pending",
        "_tokens",
        "_warmup_scopes",
    )

    def __init__(
        self,
        credential: AsyncTokenCredential,
        *,
        warmup_scopes: Sequence[str] = (),
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._tokens = TokenAdapter(credential)
        self._credential = credential
        self._warmup_scopes = tuple(warmup_scopes)
        for scope in self._warmup_scopes:
            check_scope(scope)
        self._clock = clock
        self._expiries: dict[str, float | None] = {}
        self._last_error: tuple[str, str, str, float] | None = None
        # Acquisitions a check stopped waiting for: they go on, and record their outcome.
        self._pending: dict[str, asyncio.Future[AccessTokenInfo]] = {}
        # Scopes whose latest outcome is a real failure: a later check's mere timeout does not
        # hide it from readiness.
        self._failing: set[str] = set()

    @property
    def credential(self) -> AsyncTokenCredential:
        """The credential, to hand to Azure SDK clients (``credential=...``). Do not close it:
        the middleware closes the credential it created at shutdown."""
        return self._credential

    @property
    def warmup_scopes(self) -> tuple[str, ...]:
        """The scopes warmed at startup and required for readiness."""
        return self._warmup_scopes

    async def token(self, scope: str, *, claims: str | None = None) -> str:
        """An access token for ``scope``, from the cache when it is fresh.

        Args:
            scope: One scope, such as ``https://vault.azure.net/.default``.
            claims: Claims from a claims challenge; bypasses the cache once.

        Returns:
            The token, for an ``Authorization: Bearer`` header.

        Raises:
            ValueError: ``scope`` is not one scope string.
            azure.core.exceptions.ClientAuthenticationError: No token could be obtained; with
                mi-credential a :class:`~mi_credential.ManagedIdentityError` (a
                :class:`~mi_credential.CredentialUnavailableError` when no identity is
                available here).
        """
        return (await self._get(scope, claims, None)).token

    async def token_info(
        self, scope: str, *, options: TokenRequestOptions | None = None
    ) -> AccessTokenInfo:
        """An access token for ``scope`` with its expiry, type and refresh time.

        Args:
            scope: One scope.
            options: azure-core token request options (``claims``...).

        Returns:
            The token and what is known about it.

        Raises:
            ValueError: ``scope`` is not one scope string.
            azure.core.exceptions.ClientAuthenticationError: No token could be obtained.
        """
        return await self._get(scope, None, options)

    async def _get(
        self, scope: str, claims: str | None, options: TokenRequestOptions | None
    ) -> AccessTokenInfo:
        try:
            info = await self._tokens.get_token_info(scope, claims=claims, options=options)
        except ClientAuthenticationError as exc:
            self._failed(scope, exc)
            raise
        except TypeError:
            # An unhashable "scope" (a list of scopes) fails in the credential's cache lookup;
            # say what is wrong instead. Checked here so that the common path pays nothing.
            check_scope(scope)
            raise
        self._note(scope, info.expires_on)
        return info

    def readiness(self) -> Readiness:
        """What is known now, without any I/O.

        Returns:
            The readiness snapshot; see :class:`Readiness` for what ``ready`` means.
        """
        now = self._clock()
        warm = set(self._warmup_scopes)
        ordered = [*self._warmup_scopes, *(s for s in self._expiries if s not in warm)]
        statuses = []
        for scope in ordered:
            expires_on = self._expiries.get(scope)
            statuses.append(
                ScopeStatus(
                    scope=scope,
                    expires_in=None if expires_on is None else expires_on - now,
                    warm_up=scope in warm,
                )
            )
        source = getattr(self._credential, "source", None)
        source_name = getattr(source, "value", None)
        has_source = not (isinstance(self._credential, ManagedIdentityCredential) and not source)
        ready = has_source and all(
            s.expires_in is not None and s.expires_in > 0 for s in statuses if s.warm_up
        )
        last = self._last_error
        return Readiness(
            ready=ready,
            source=source_name if isinstance(source_name, str) else None,
            credential=type(self._credential).__name__,
            scopes=tuple(statuses),
            last_error=None
            if last is None
            else ErrorRecord(scope=last[0], type=last[1], message=last[2], age=now - last[3]),
        )

    async def check(self, *, timeout: float = 0.5) -> Readiness:
        """Make sure every warm-up scope has a token, then report readiness.

        A fresh token is a cache hit (no I/O). A missing or expiring one is acquired; if that
        takes longer than ``timeout``, the check reports what it knows and the acquisition goes
        on in the background, so the next check finds its result.

        Args:
            timeout: Seconds to wait for acquisitions (keep it below the probe's own timeout).

        Returns:
            The readiness snapshot after the attempt.
        """
        await self.acquire(self._warmup_scopes, timeout=timeout)
        return self.readiness()

    async def acquire(
        self, scopes: Iterable[str], *, timeout: float
    ) -> dict[str, BaseException]:
        """Obtain a token for each scope concurrently, waiting at most ``timeout`` seconds.

        Failures are recorded for :meth:`readiness` and returned, not raised. Waiting is what
        times out, not the acquisition: it goes on, its outcome (the endpoint's real error, or a
        token) is recorded when it ends, and the next check waits for the same one.

        Args:
            scopes: The scopes.
            timeout: Seconds to wait for all of them.

        Returns:
            The scopes that failed, with their error (:class:`TimeoutError` for those still
            pending at the deadline); empty if every scope has a token.
        """
        tasks: dict[asyncio.Future[AccessTokenInfo], str] = {}
        for scope in scopes:
            task = self._pending.get(scope)
            if task is None or task.done():
                task = self._pending[scope] = asyncio.ensure_future(self.token_info(scope))
                task.add_done_callback(functools.partial(self._settled, scope))
            tasks[task] = scope
        if not tasks:
            return {}
        # asyncio.wait cancels nothing: a check that stops waiting, or is cancelled, leaves the
        # acquisitions be.
        await asyncio.wait(tasks, timeout=timeout)
        failures: dict[str, BaseException] = {}
        for task, scope in tasks.items():
            if not task.done():
                error: BaseException = TimeoutError(f"no token within {timeout:g} s")
                if scope not in self._failing:  # a real failure says more than a timeout
                    self._failed(scope, error)
                failures[scope] = error
            elif not task.cancelled() and task.exception() is not None:
                exception = task.exception()
                assert exception is not None
                if not isinstance(exception, ClientAuthenticationError):
                    self._failed(scope, exception)
                failures[scope] = exception
        return failures

    def _settled(self, scope: str, task: asyncio.Future[AccessTokenInfo]) -> None:
        """An acquisition of :meth:`acquire` ended: forget it (its outcome is recorded)."""
        if self._pending.get(scope) is task:
            del self._pending[scope]
        if not task.cancelled():
            task.exception()  # retrieved: a failure nobody awaited is recorded, not lost

    def cancel_pending(self) -> None:
        """Stop the acquisitions checks left running (at shutdown)."""
        for task in list(self._pending.values()):
            task.cancel()

    def _reset(self, credential: AsyncTokenCredential) -> None:
        """Use ``credential`` from now on and forget what was known about the previous one."""
        self._tokens = TokenAdapter(credential)
        self._credential = credential
        self._expiries.clear()
        self._last_error = None
        self._failing.clear()
        self.cancel_pending()

    def __repr__(self) -> str:
        return (
            f"TokenProvider(credential={type(self._credential).__name__}, "
            f"warmup_scopes={list(self._warmup_scopes)!r})"
        )

    def _note(self, scope: str, expires_on: float) -> None:
        self._failing.discard(scope)
        expiries = self._expiries
        if scope in expiries or len(expiries) < _MAX_TRACKED_SCOPES:
            expiries[scope] = expires_on

    def _failed(self, scope: str, exc: BaseException) -> None:
        expiries = self._expiries
        if scope not in expiries and len(expiries) < _MAX_TRACKED_SCOPES:
            expiries[scope] = None
        if not isinstance(exc, TimeoutError):
            self._failing.add(scope)
        self._last_error = (scope, type(exc).__name__, describe_error(exc), self._clock())
