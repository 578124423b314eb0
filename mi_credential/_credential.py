"""ManagedIdentityCredential, the public facade: configuration, the two getters with their one
fast path, close. The cache and single-flight live in ``_cache``, the attempts under the deadline
in ``_acquire``, the protocol of each hosting source in ``_sources``, the HTTP in ``_transport``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any

from azure.core.credentials import AccessToken, AccessTokenInfo, TokenRequestOptions

from . import _fork  # noqa: F401 - a forked child forgets its parent's loops
from ._cache import Entry, TokenCache
from ._constants import DEFAULT_CONNECT_TIMEOUT, DEFAULT_READ_TIMEOUT, DEFAULT_TIMEOUT
from ._constants import EnvironmentVariables as Env
from ._environment import SourceConfig, build_identity
from ._errors import CredentialUnavailableError, ManagedIdentityError
from ._models import Identity, ManagedIdentitySource, ParsedToken
from ._options import NO_SOURCE_MESSAGE, check_options, configure
from ._sources import Target, TokenSource
from ._transport import Transport
from .http import check_scope
from .telemetry import IDENTITY_KIND, SOURCE

if TYPE_CHECKING:
    import aiohttp
    from opentelemetry.metrics import MeterProvider
    from opentelemetry.trace import TracerProvider

    from ._acquire import Acquirer
    from ._store import TokenStore

_logger = logging.getLogger("mi_credential")


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
        arc_key_directory: Azure Arc: the directory the agent writes its challenge key files
            to; a key file elsewhere is refused (default: the platform's,
            ``/var/opt/azcmagent/tokens`` on Linux).
        shared_cache: Share tokens with this user's other processes on this host (one request
            per refresh between them): ``True`` (a per-user directory), a directory path, or
            ``False``. ``None`` (default): as ``MI_CREDENTIAL_SHARED_CACHE`` (``1`` or a path)
            says. Needs the ``shared-cache`` extra; see the README's "Many worker processes".
        environ: The environment variables to read (default :data:`os.environ`).
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
            the requested identity, an environment variable is malformed, or ``shared_cache``
            is neither a boolean nor a path.
        TypeError: An unknown keyword argument.
        ImportError: ``shared_cache`` was given without the ``shared-cache`` extra installed.
    """

    # A process may hold many credentials (one per identity, per client library); slots keep
    # each one small.
    __slots__ = (
        "__weakref__",
        "_acquirer",
        "_cache",
        "_closed",
        "_config",
        "_identity",
        "_source",
        "_store",
        "_transport",
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
        arc_key_directory: str | None = None,
        shared_cache: bool | str | os.PathLike[str] | None = None,
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
        check_options(kwargs, timeout, connection_timeout, read_timeout)
        env: Mapping[str, str] = os.environ if environ is None else environ
        identity = build_identity(client_id, identity_config)
        self._config: SourceConfig | None
        self._source: TokenSource | None
        self._config, self._source = configure(
            tuple(env.get(name) for name in Env.ALL),
            identity,
            exclude_workload_identity,
            tuple(additionally_allowed_tenants),
            arc_key_directory,
        )
        self._identity: Identity = self._source.identity if self._source is not None else identity
        self._closed = False

        # OpenTelemetry and the acquisition machinery load with the first credential, not with
        # the package: a process that only imports it pays for neither.
        from ._acquire import shared_acquirer
        from ._recorder import Recorder
        from ._shared_cache import open_store

        now = clock or time.time
        monotonic = clock or time.monotonic
        recorder = Recorder.get(
            tracer_provider=tracer_provider,
            meter_provider=meter_provider,
            attributes={
                SOURCE: self._config.source.value if self._config else "unavailable",
                IDENTITY_KIND: self._identity.kind.value,
            },
            monotonic=monotonic,
        )
        self._cache = TokenCache(now=now, stats=recorder.stats)
        self._acquirer: Acquirer | None = None
        self._transport: Transport | None = None
        self._store: TokenStore | None = open_store(
            shared_cache, env, self._config, self._identity, now
        )
        if self._source is None:
            _logger.warning("ManagedIdentityCredential: %s", NO_SOURCE_MESSAGE)
            return
        self._acquirer = shared_acquirer(
            self._source,
            recorder,
            timeout=float(timeout),
            now=now,
            monotonic=monotonic,
            sleep=sleep or asyncio.sleep,
            user_agent=user_agent,
        )
        self._transport = Transport(
            session=session,
            connect_timeout=float(connection_timeout),
            read_timeout=float(read_timeout),
            verify=connection_verify,
        )
        assert self._config is not None
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
        entry = None if claims or tenant_id is not None or enable_cae else self._cache.hit(scopes)
        if entry is None:
            entry = await self._get(scopes, claims, tenant_id, enable_cae, "get_token")
        return entry.access_token or entry.new_access_token()

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
        entry = None if options else self._cache.hit(scopes)
        if entry is None:
            options = options or {}
            entry = await self._get(
                scopes,
                options.get("claims"),
                options.get("tenant_id"),
                bool(options.get("enable_cae", False)),
                "get_token_info",
            )
        return entry.info or entry.new_info()

    async def close(self) -> None:
        """Cancel in-flight acquisitions, forget cached tokens and close the HTTP session the
        credential created. Idempotent; a closed credential cannot be used again."""
        if self._closed:
            return
        self._closed = True
        await self._cache.close(functools.partial(_closed_error, self.source))
        if self._transport is not None:
            await self._transport.close()

    async def __aenter__(self) -> ManagedIdentityCredential:
        if self._closed:
            raise _closed_error(self.source)
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
        shared = f", shared_cache={self._store.directory!r}" if self._store is not None else ""
        return (
            f"ManagedIdentityCredential(source={source!r}, identity={self._identity.describe()!r}"
            f"{shared}{', closed' if self._closed else ''})"
        )

    # -- everything but the fast cache hit ------------------------------------------------------

    async def _get(
        self,
        scopes: Sequence[str],
        claims: str | None,
        tenant_id: str | None,
        enable_cae: bool,
        method: str,
    ) -> Entry:
        """Validation, then the cache: a stale token served, or an acquisition joined."""
        try:
            if self._closed:
                raise _closed_error(self.source)
            cache = self._cache
            scope = scopes[0] if len(scopes) == 1 and tenant_id is None and not enable_cae else None
            if scope is not None and not claims:
                flight = cache.pending(scope)
                if flight is not None:  # the first token for this scope is on its way
                    return await cache.wait(flight, coalesced=True)
            for each in scopes:
                check_scope(each)
            source = self._source
            if source is None:
                raise CredentialUnavailableError(NO_SOURCE_MESSAGE)
            target = source.target(scopes, tenant_id, enable_cae)
            return await cache.get(
                target,
                self._fetch,
                claims=claims or None,
                sent_claims=source.sent_claims(target, claims),
                scope=scope,
            )
        except ManagedIdentityError as exc:
            # The acquisition itself logged the failure once at WARNING; this is per call.
            _logger.debug("ManagedIdentityCredential.%s failed: %s", method, exc)
            raise

    async def _fetch(
        self, target: Target, claims: str | None, reason: str, cache_result: str, shared: bool
    ) -> ParsedToken:
        """A token from the endpoint through this credential's transport, or from the shared
        cache when it is on and the token may be shared."""
        assert self._acquirer is not None and self._transport is not None
        store = self._store if shared else None
        return await self._acquirer.acquire(
            self._transport, target, claims, reason, cache_result, store
        )


def _closed_error(source: ManagedIdentitySource | None) -> ManagedIdentityError:
    return ManagedIdentityError(
        "This ManagedIdentityCredential is closed; create a new one.", source=source
    )
