"""ManagedIdentityCredential: cache, single-flight acquisition, retries under one deadline,
telemetry. The protocol details live in ``_sources``; the HTTP in ``_transport``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import random
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping, Sequence
from functools import partial
from types import TracebackType
from typing import TYPE_CHECKING, Any

from azure.core.credentials import AccessToken, AccessTokenInfo, TokenRequestOptions

from ._constants import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_READ_TIMEOUT,
    DEFAULT_TIMEOUT,
    MANDATORY_REFRESH_MARGIN,
    REFRESH_RETRY_BACKOFF,
)
from ._constants import EnvironmentVariables as Env
from ._environment import SourceConfig, build_identity, detect_source
from ._errors import TROUBLESHOOTING_URL, CredentialUnavailableError, ManagedIdentityError
from ._models import (
    Identity,
    ManagedIdentitySource,
    ParsedToken,
    RawResponse,
    RedactedAccessToken,
    RedactedAccessTokenInfo,
    TokenRequest,
)
from ._retry import AttemptOutcome, RetryState, next_delay, parse_retry_after
from ._sources import Target, TokenSource, check_scope, create_source
from ._transport import Transport, TransportError
from ._version import __version__

if TYPE_CHECKING:
    import aiohttp
    from opentelemetry.metrics import MeterProvider
    from opentelemetry.trace import TracerProvider

    from ._telemetry import Acquisition

_logger = logging.getLogger("mi_credential")

#: azure-core pipeline keywords azure-identity accepts; they configure a pipeline we do not have.
_IGNORED_KWARGS = frozenset(
    {
        "transport",
        "policies",
        "per_call_policies",
        "per_retry_policies",
        "logging_enable",
        "logging_policy",
        "http_logging_policy",
        "retry_policy",
        "retry_total",
        "retry_connect",
        "retry_read",
        "retry_status",
        "retry_backoff_factor",
        "retry_backoff_max",
        "retry_mode",
        "proxies",
        "headers",
        "user_agent_policy",
        "distributed_tracing_policy",
        "_enable_imds_probe",
    }
)

_NO_SOURCE_MESSAGE = (
    "No managed identity endpoint found: IDENTITY_ENDPOINT is set but neither IDENTITY_HEADER "
    "(App Service) nor IMDS_ENDPOINT (Azure Arc) is, so the hosting platform cannot be "
    f"determined. Visit {TROUBLESHOOTING_URL} to troubleshoot this issue."
)


class _Entry:
    """A cached token. Updated in place when refreshed, so every alias sees the new token."""

    __slots__ = (
        "access_token",
        "expires_on",
        "info",
        "mandatory_at",
        "next_background_refresh",
        "refresh_on",
    )

    def __init__(self, parsed: ParsedToken) -> None:
        self.next_background_refresh = 0.0
        self.update(parsed)

    def update(self, parsed: ParsedToken) -> None:
        self.access_token: AccessToken = RedactedAccessToken(parsed.token, parsed.expires_on)
        self.info: AccessTokenInfo = RedactedAccessTokenInfo(
            parsed.token,
            parsed.expires_on,
            token_type=parsed.token_type,
            refresh_on=parsed.refresh_on,
        )
        self.expires_on = parsed.expires_on
        self.refresh_on = parsed.refresh_on
        self.mandatory_at = max(parsed.refresh_on, parsed.expires_on - MANDATORY_REFRESH_MARGIN)
        self.next_background_refresh = 0.0


class _Flight:
    """An acquisition in flight and the futures of the callers waiting for it."""

    __slots__ = ("scope", "task", "waiters")

    def __init__(self, task: asyncio.Task[_Entry]) -> None:
        self.task = task
        self.waiters: list[asyncio.Future[_Entry]] = []
        self.scope: str | None = None


class ManagedIdentityCredential:
    """Authenticates with an Azure managed identity, in every hosting environment.

    A drop-in for :class:`azure.identity.aio.ManagedIdentityCredential`. The hosting source is
    detected from environment variables once, when the credential is created. Tokens are cached
    per resource; concurrent callers share one request; a token past its refresh time keeps being
    served while one background refresh runs; every acquisition retries transient failures under
    one deadline and is traced and measured with OpenTelemetry.

    Args:
        client_id: Client ID of a user-assigned identity. Also the application for workload
            identity (default ``AZURE_CLIENT_ID``).
        identity_config: A user-assigned identity as ``{"object_id": ...}``,
            ``{"resource_id": ...}`` or ``{"client_id": ...}``; other entries are sent to the
            endpoint verbatim. Never modified.
        timeout: Overall deadline of one acquisition, retries included, in seconds.
        connection_timeout: Seconds to establish each connection.
        read_timeout: Seconds to wait for each read of a response.
        session: An :class:`aiohttp.ClientSession` to send with (it is never closed here).
            By default the credential creates its own.
        connection_verify: ``True`` to verify TLS with the system trust store, or the path of a
            CA bundle (PEM) to trust instead. Service Fabric always pins its thumbprint.
        additionally_allowed_tenants: Workload identity: tenants besides ``AZURE_TENANT_ID``
            that ``tenant_id`` may name; ``"*"`` allows any.
        exclude_workload_identity: Do not select workload identity even if configured.
        environ: Environment variables to detect the source from (default :data:`os.environ`).
        clock: Wall clock, epoch seconds (default :func:`time.time`). When given, it also
            drives deadlines and durations.
        sleep: Awaitable sleep used between retries (default :func:`asyncio.sleep`).
        tracer_provider: OpenTelemetry tracer provider (default: the global one).
        meter_provider: OpenTelemetry meter provider (default: the global one).
        user_agent: Text appended to the ``User-Agent`` header.
        kwargs: azure-identity's pipeline keywords (``transport``, ``retry_total``,
            ``logging_enable``...) are accepted and have no effect.

    Raises:
        ValueError: The identity arguments are inconsistent, the selected source cannot serve
            the requested identity, or an environment variable is malformed.
        TypeError: An unknown keyword argument.
    """

    # A process may hold many credentials (one per identity, per client library); slots keep
    # each one small.
    __slots__ = (
        "__weakref__",
        "_closed",
        "_config",
        "_counts",
        "_entries",
        "_hot",
        "_identity",
        "_inflight",
        "_monotonic",
        "_now",
        "_pending",
        "_random",
        "_sleep",
        "_source",
        "_telemetry",
        "_timeout",
        "_transport",
        "_user_agent",
    )

    def __init__(
        self,
        *,
        client_id: str | None = None,
        identity_config: Mapping[str, str] | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        connection_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        read_timeout: float = DEFAULT_READ_TIMEOUT,
        session: aiohttp.ClientSession | None = None,
        connection_verify: bool | str = True,
        additionally_allowed_tenants: Sequence[str] = (),
        exclude_workload_identity: bool = False,
        environ: Mapping[str, str] | None = None,
        clock: Callable[[], float] | None = None,
        sleep: Callable[[float], Awaitable[Any]] | None = None,
        tracer_provider: TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
        user_agent: str | None = None,
        **kwargs: Any,
    ) -> None:
        exclude_workload_identity = bool(
            kwargs.pop("_exclude_workload_identity_credential", exclude_workload_identity)
        )
        unknown = sorted(set(kwargs) - _IGNORED_KWARGS)
        if unknown:
            raise TypeError(
                "ManagedIdentityCredential got unexpected keyword arguments: " + ", ".join(unknown)
            )
        for name, value in (
            ("timeout", timeout),
            ("connection_timeout", connection_timeout),
            ("read_timeout", read_timeout),
        ):
            if not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"{name} must be a positive number of seconds, not {value!r}.")

        env: Mapping[str, str] = os.environ if environ is None else environ
        identity = build_identity(client_id, identity_config)
        self._config: SourceConfig | None
        self._source: TokenSource | None
        self._config, self._source = _configure(
            tuple(env.get(name) for name in Env.ALL),
            identity,
            exclude_workload_identity,
            tuple(additionally_allowed_tenants),
        )
        self._identity: Identity = self._source.identity if self._source is not None else identity

        self._now: Callable[[], float] = clock or time.time
        self._monotonic: Callable[[], float] = clock or time.monotonic
        self._sleep: Callable[[float], Awaitable[Any]] = sleep or asyncio.sleep
        self._random: Callable[[], float] = random.random
        self._timeout = float(timeout)
        self._transport = Transport(
            session=session,
            connect_timeout=float(connection_timeout),
            read_timeout=float(read_timeout),
            verify=connection_verify,
        )
        self._user_agent = _user_agent(user_agent)

        # Cache. ``_hot`` maps a scope string to its entry for the fast path; ``_entries`` is
        # keyed by target (resource, tenant). Both point at the same _Entry objects.
        self._hot: dict[str, _Entry] = {}
        self._entries: dict[Target, _Entry] = {}
        # In flight, by (target, claims): claims are part of the key only where the source sends
        # them (workload identity), so a claims challenge never joins an acquisition without.
        self._inflight: dict[tuple[Target, str | None], _Flight] = {}
        # The first acquisition of a scope string, for the fast path of the callers that follow
        # (a cold start's herd waits on it without repeating the first caller's validation).
        self._pending: dict[str, _Flight] = {}
        self._closed = False

        # OpenTelemetry is loaded with the first credential, not with the package.
        from ._telemetry import IDENTITY_KIND, SOURCE, CredentialTelemetry

        source_name = self._config.source.value if self._config else "unavailable"
        self._telemetry = CredentialTelemetry.get(
            tracer_provider=tracer_provider,
            meter_provider=meter_provider,
            attributes={SOURCE: source_name, IDENTITY_KIND: self._identity.kind.value},
            monotonic=self._monotonic,
        )
        self._telemetry.watch(self)
        # Plain counters (shared per source and identity kind), read by observable instruments.
        self._counts = self._telemetry.counts
        if self._config is None:
            _logger.warning("ManagedIdentityCredential: %s", _NO_SOURCE_MESSAGE)
        else:
            assert self._source is not None
            _logger.info(
                "ManagedIdentityCredential will use %s (%s) with %s",
                self._source.endpoint_name,
                self._config.reason,
                self._source.describe_identity(),
            )

    # -- public API -----------------------------------------------------------------------------

    @property
    def source(self) -> ManagedIdentitySource | None:
        """The detected hosting source, or ``None`` if none could be determined."""
        return self._config.source if self._config else None

    async def get_token(
        self,
        *scopes: str,
        claims: str | None = None,
        tenant_id: str | None = None,
        enable_cae: bool = False,
        **kwargs: Any,
    ) -> AccessToken:
        """Get an access token for one scope.

        Args:
            scopes: Exactly one scope, such as ``https://vault.azure.net/.default`` (workload
                identity accepts several).
            claims: Claims from a claims challenge. A non-empty value bypasses the cache once.
            tenant_id: Workload identity only: another tenant, if allowed. Ignored otherwise.
            enable_cae: Workload identity only: request a CAE-capable token. Ignored otherwise.
            kwargs: Accepted for protocol compatibility; ignored.

        Returns:
            The token and its expiry (epoch seconds).

        Raises:
            ValueError: Not exactly one scope, or a scope that is not a non-empty string.
            CredentialUnavailableError: No managed identity is available here.
            ManagedIdentityError: Any other failure (see the error tree in the README).
        """
        if len(scopes) == 1 and not claims and tenant_id is None:
            try:
                entry = self._hot.get(scopes[0])
                pending = None if entry is not None else self._pending.get(scopes[0])
            except TypeError:  # unhashable, so not a scope: _get() raises the ValueError
                entry = pending = None
            if entry is not None and self._now() < entry.refresh_on:
                self._counts.hits += 1
                return entry.access_token
            if pending is not None:  # the first token for this scope is on its way
                return (await self._wait(pending, coalesced=True)).access_token
        entry = await self._get(scopes, claims, tenant_id, enable_cae, "get_token")
        return entry.access_token

    async def get_token_info(
        self, *scopes: str, options: TokenRequestOptions | None = None
    ) -> AccessTokenInfo:
        """Get an access token for one scope, with its type and refresh time.

        Args:
            scopes: Exactly one scope (workload identity accepts several).
            options: ``claims`` (bypasses the cache once), ``tenant_id`` and ``enable_cae``
                (workload identity only); unknown keys are ignored.

        Returns:
            The token, its expiry, type and the time it should be refreshed.

        Raises:
            ValueError: Not exactly one scope, or a scope that is not a non-empty string.
            CredentialUnavailableError: No managed identity is available here.
            ManagedIdentityError: Any other failure.
        """
        if not options and len(scopes) == 1:
            try:
                entry = self._hot.get(scopes[0])
                pending = None if entry is not None else self._pending.get(scopes[0])
            except TypeError:  # unhashable, so not a scope: _get() raises the ValueError
                entry = pending = None
            if entry is not None and self._now() < entry.refresh_on:
                self._counts.hits += 1
                return entry.info
            if pending is not None:  # the first token for this scope is on its way
                return (await self._wait(pending, coalesced=True)).info
        options = options or {}
        entry = await self._get(
            scopes,
            options.get("claims"),
            options.get("tenant_id"),
            bool(options.get("enable_cae", False)),
            "get_token_info",
        )
        return entry.info

    async def close(self) -> None:
        """Cancel in-flight acquisitions, forget cached tokens and close the HTTP session the
        credential created. Idempotent; a closed credential cannot be used again."""
        if self._closed:
            return
        self._closed = True
        self._hot.clear()
        self._entries.clear()
        tasks = [f.task for f in self._inflight.values() if not f.task.done()]
        self._inflight.clear()
        self._pending.clear()
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # pragma: no cover - close() is always awaited in a loop
            loop = None
        for task in tasks:
            task.cancel()
        current = [t for t in tasks if t.get_loop() is loop]
        if current:
            await asyncio.gather(*current, return_exceptions=True)
        await self._transport.close()

    async def __aenter__(self) -> ManagedIdentityCredential:
        if self._closed:
            raise self._closed_error()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc_value: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        source = self._config.source.value if self._config else None
        return (
            f"ManagedIdentityCredential(source={source!r}, identity={self._identity.describe()!r}"
            f"{', closed' if self._closed else ''})"
        )

    # -- telemetry subject ----------------------------------------------------------------------

    def telemetry_expiries(self) -> Iterable[tuple[float, dict[str, str]]]:
        from ._telemetry import RESOURCE as RESOURCE_ATTRIBUTE

        now = self._now()
        common = self._telemetry.attributes
        for target, entry in list(self._entries.items()):
            yield entry.expires_on - now, {**common, RESOURCE_ATTRIBUTE: target.label}

    # -- acquisition ----------------------------------------------------------------------------

    async def _get(
        self,
        scopes: Sequence[str],
        claims: str | None,
        tenant_id: str | None,
        enable_cae: bool,
        method: str,
    ) -> _Entry:
        """Everything but the fast cache hit: validation, stale-while-revalidate, acquisition."""
        try:
            return await self._get_inner(scopes, claims, tenant_id, enable_cae)
        except ManagedIdentityError as exc:
            # The acquisition itself logged the failure once at WARNING; this is per call.
            _logger.debug("ManagedIdentityCredential.%s failed: %s", method, exc)
            raise

    async def _get_inner(
        self,
        scopes: Sequence[str],
        claims: str | None,
        tenant_id: str | None,
        enable_cae: bool,
    ) -> _Entry:
        if self._closed:
            raise self._closed_error()
        for scope in scopes:
            check_scope(scope)
        source = self._source
        if source is None:
            raise CredentialUnavailableError(_NO_SOURCE_MESSAGE)
        target = source.target(scopes, tenant_id)
        if enable_cae and source.needs_assertion:
            from ._sources.workload_identity import merge_cae_claims

            claims = merge_cae_claims(claims)
        hot_key = scopes[0] if len(scopes) == 1 and tenant_id is None and not enable_cae else None

        entry = self._entries.get(target)
        now = self._now()
        if entry is not None and not claims:
            if hot_key is not None:
                self._hot[hot_key] = entry
            if now < entry.refresh_on:
                self._counts.hits += 1
                return entry
            if now < entry.mandatory_at:
                # Advisory window: serve the valid token, refresh once in the background.
                self._counts.stale += 1
                if now >= entry.next_background_refresh and (target, None) not in self._inflight:
                    entry.next_background_refresh = now + REFRESH_RETRY_BACKOFF
                    self._start(target, None, "proactive", "stale")
                return entry

        reason = "claims" if claims else ("initial" if entry is None else "expired")
        first = entry is None and not claims
        entry = await self._join(target, claims, reason, hot_key if first else None)
        if hot_key is not None:
            self._hot[hot_key] = entry
        return entry

    async def _join(
        self, target: Target, claims: str | None, reason: str, scope: str | None
    ) -> _Entry:
        """Wait for the in-flight acquisition of ``target``, starting one if there is none.

        ``scope``, for the first acquisition of a single-scope target, publishes it for the
        callers that follow with the same scope string (:attr:`_pending`)."""
        assert self._source is not None
        key = (target, claims if self._source.sends_claims else None)
        flight = self._inflight.get(key)
        if flight is None or flight.task.get_loop() is not asyncio.get_running_loop():
            flight = self._start(target, claims, reason, "miss")
            if scope is not None:
                self._pending[scope] = flight
                flight.scope = scope
            return await self._wait(flight, coalesced=False)
        return await self._wait(flight, coalesced=True)

    async def _wait(self, flight: _Flight, *, coalesced: bool) -> _Entry:
        """Wait for an acquisition on a future of this caller's own: a caller that is cancelled
        cancels its future, never the acquisition the others wait for."""
        counts = self._counts
        counts.misses += 1
        if coalesced:
            counts.coalesced += 1
        waiter: asyncio.Future[_Entry] = asyncio.get_running_loop().create_future()
        flight.waiters.append(waiter)
        try:
            return await waiter
        except BaseException:
            counts.miss_errors += 1
            raise

    def _start(self, target: Target, claims: str | None, reason: str, cache_result: str) -> _Flight:
        assert self._source is not None
        key = (target, claims if self._source.sends_claims else None)
        task = _start_task(self._acquire(target, claims, reason, cache_result))
        flight = self._inflight[key] = _Flight(task)
        task.add_done_callback(partial(self._land, key, flight))
        return flight

    def _land(
        self, key: tuple[Target, str | None], flight: _Flight, task: asyncio.Task[_Entry]
    ) -> None:
        """The acquisition ended: forget it and hand its outcome to every waiter."""
        if self._inflight.get(key) is flight:
            del self._inflight[key]
        if flight.scope is not None and self._pending.get(flight.scope) is flight:
            del self._pending[flight.scope]
        waiters, flight.waiters = flight.waiters, []
        if task.cancelled():
            for waiter in waiters:
                if not waiter.done():
                    if self._closed:
                        waiter.set_exception(self._closed_error())
                    else:
                        waiter.cancel()
            return
        error = task.exception()  # retrieved: a failure nobody awaited is not reported lost
        for waiter in waiters:
            if not waiter.done():
                if error is not None:
                    waiter.set_exception(error)
                else:
                    waiter.set_result(task.result())

    async def _acquire(
        self, target: Target, claims: str | None, reason: str, cache_result: str
    ) -> _Entry:
        source = self._source
        assert source is not None
        record = self._telemetry.start_acquisition(target.label, reason, cache_result)
        try:
            assertion = None
            if source.needs_assertion:
                from ._files import read_federated_token

                assert self._config is not None and self._config.token_file is not None
                assertion = read_federated_token(self._config.token_file)
            request = source.build_request(target, claims=claims, assertion=assertion)
            request = request.with_headers(
                ("User-Agent", self._user_agent),
                ("x-ms-client-request-id", _request_id()),
            )
            async with self._transport.lease():
                parsed = await self._send_with_retries(source, request, record)
        except BaseException as exc:
            self._telemetry.finish_acquisition(record, exc)
            if isinstance(exc, ManagedIdentityError):
                self._log_failure(target, cache_result, exc)
            raise
        self._telemetry.finish_acquisition(record, None)
        entry = self._entries.get(target)
        if entry is None:
            entry = self._entries[target] = _Entry(parsed)
        else:
            entry.update(parsed)
        _logger.debug(
            "ManagedIdentityCredential acquired a token for %s (expires in %.0f s, refresh in "
            "%.0f s, %d attempt(s), reason: %s)",
            target.label,
            parsed.expires_on - self._now(),
            parsed.refresh_on - self._now(),
            record.attempts,
            reason,
        )
        return entry

    def _log_failure(self, target: Target, cache_result: str, error: ManagedIdentityError) -> None:
        entry = self._entries.get(target)
        if cache_result == "stale" and entry is not None:
            _logger.warning(
                "Background refresh of the token for %s failed; the cached token (valid "
                "%.0f s more) is still served and the refresh is retried in %.0f s: %s",
                target.label,
                entry.expires_on - self._now(),
                REFRESH_RETRY_BACKOFF,
                error,
            )
        else:
            _logger.warning(
                "ManagedIdentityCredential could not acquire a token for %s: %s",
                target.label,
                error,
            )

    async def _send_with_retries(
        self, source: TokenSource, request: TokenRequest, record: Acquisition
    ) -> ParsedToken:
        start = self._monotonic()
        deadline = start + self._timeout
        state = RetryState()
        while True:
            state.attempts += 1
            record.attempts = state.attempts
            request_time = self._now()
            try:
                response = await self._send(request, deadline, state.attempts - 1, record)
                if response.status == 401 and source.answers_challenges:
                    from ._files import read_arc_key

                    key = read_arc_key(source.challenge_path(response))
                    request = source.authorize(request, key)
                    response = await self._send(request, deadline, state.attempts - 1, record)
            except TransportError as exc:
                if not exc.retryable:
                    raise source.unreachable_error(
                        request,
                        exc.description,
                        attempts=state.attempts,
                        elapsed=self._monotonic() - start,
                    ) from exc
                outcome = AttemptOutcome(error=True)
                failure: TransportError | RawResponse = exc
            else:
                if 200 <= response.status < 300:
                    try:
                        return source.parse_response(response, request, request_time)
                    except ManagedIdentityError as exc:
                        exc.attempts = state.attempts
                        exc.elapsed = self._monotonic() - start
                        raise
                outcome = AttemptOutcome(
                    status=response.status,
                    retry_after=parse_retry_after(response.headers, self._now()),
                )
                failure = response
            elapsed = self._monotonic() - start
            delay = next_delay(
                source.retry_policy,
                state,
                outcome,
                elapsed=elapsed,
                remaining=deadline - self._monotonic(),
                random=self._random,
            )
            if delay is None:
                if isinstance(failure, TransportError):
                    raise source.unreachable_error(
                        request, failure.description, attempts=state.attempts, elapsed=elapsed
                    ) from failure
                raise source.error_from_response(
                    failure, request, attempts=state.attempts, elapsed=elapsed
                )
            await self._sleep(delay)

    async def _send(
        self, request: TokenRequest, deadline: float, resend_count: int, record: Acquisition
    ) -> RawResponse:
        remaining = deadline - self._monotonic()
        if remaining <= 0:
            raise TransportError("the deadline passed", retryable=True)
        telemetry = self._telemetry
        attempt = telemetry.start_attempt(record, request.method, request.url, resend_count)
        try:
            response = await self._transport.send(request, timeout=remaining)
        except TransportError as exc:
            cause = exc.__cause__
            telemetry.finish_attempt(
                attempt, error_type=type(cause).__name__ if cause else "timeout"
            )
            raise
        except BaseException as exc:
            telemetry.finish_attempt(attempt, error_type=type(exc).__name__)
            raise
        telemetry.finish_attempt(attempt, status=response.status)
        return response

    def _closed_error(self) -> ManagedIdentityError:
        return ManagedIdentityError(
            "This ManagedIdentityCredential is closed; create a new one.",
            source=self.source,
        )


@functools.lru_cache(maxsize=32)
def _configure(
    environment: tuple[str | None, ...],
    identity: Identity,
    exclude_workload_identity: bool,
    additionally_allowed_tenants: tuple[str, ...],
) -> tuple[SourceConfig | None, TokenSource | None]:
    """The source configuration and the source object for the values of :data:`Env.ALL`.

    Both are immutable, so credentials created alike (the usual case: same environment, same
    identity) share them instead of each holding copies.

    Raises:
        ValueError: As :func:`detect_source` and :func:`create_source` (not cached).
    """
    env = {
        name: value for name, value in zip(Env.ALL, environment, strict=True) if value is not None
    }
    config = detect_source(env, exclude_workload_identity=exclude_workload_identity)
    if config is None:
        return None, None
    disable_multitenant = env.get(Env.AZURE_IDENTITY_DISABLE_MULTITENANTAUTH, "")
    source = create_source(
        config,
        identity,
        additionally_allowed_tenants=additionally_allowed_tenants,
        multitenant_disabled=disable_multitenant.strip().lower() in ("1", "true"),
    )
    return config, source


if sys.version_info >= (3, 12):

    def _start_task(coroutine: Coroutine[Any, Any, _Entry]) -> asyncio.Task[_Entry]:
        """Start an acquisition in a task of its own, running its first step at once: the
        request is on the wire before the caller yields, instead of one loop iteration later
        (behind every other ready callback, such as the rest of a cold start's herd)."""
        return asyncio.Task(coroutine, loop=asyncio.get_running_loop(), eager_start=True)

else:

    def _start_task(coroutine: Coroutine[Any, Any, _Entry]) -> asyncio.Task[_Entry]:
        """Start an acquisition in a task of its own (its first step runs at the next loop
        iteration: eager tasks need Python 3.12)."""
        return asyncio.get_running_loop().create_task(coroutine)


_BASE_USER_AGENT = (
    f"mi-credential/{__version__} Python/{'.'.join(map(str, sys.version_info[:3]))} "
    f"({sys.platform}) aiohttp"
)


def _user_agent(suffix: str | None) -> str:
    return f"{_BASE_USER_AGENT} {suffix}" if suffix else _BASE_USER_AGENT


def _request_id() -> str:
    """A fresh ``x-ms-client-request-id``, the same on every attempt of one acquisition."""
    import uuid

    return str(uuid.uuid4())
