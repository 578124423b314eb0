"""The pipeline policy and the bearer token provider."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar, cast

from azure.core.credentials import TokenRequestOptions
from azure.core.credentials_async import AsyncSupportsTokenInfo, AsyncTokenCredential
from azure.core.exceptions import HttpResponseError, ServiceRequestError
from azure.core.pipeline import PipelineRequest, PipelineResponse
from azure.core.pipeline.policies import AsyncHTTPPolicy

from mi_credential.http import TokenAdapter, check_scope, claims_challenge

_logger = logging.getLogger("mi_credential_azure_core")

HTTPRequestType = TypeVar("HTTPRequestType")
AsyncHTTPResponseType = TypeVar("AsyncHTTPResponseType")

TokenProvider = AsyncTokenCredential | AsyncSupportsTokenInfo
"""What the policy accepts: anything with an async ``get_token_info`` or ``get_token``."""

_HTTPS_MESSAGE = (
    "Bearer token authentication is not permitted for non-TLS protected (non-https) URLs."
)


class BearerTokenPolicy(AsyncHTTPPolicy[HTTPRequestType, AsyncHTTPResponseType]):
    """Adds an ``Authorization: Bearer`` header with a token from the credential.

    A drop-in for azure-core's ``AsyncBearerTokenCredentialPolicy``: pass it as
    ``authentication_policy=`` to an Azure SDK client that takes that keyword (the generated
    ``azure-mgmt-*`` clients), or put it in the policies of an
    ``AsyncPipelineClient``/``AsyncPipeline``. The Storage, Tables and Key Vault clients build
    their own pipeline and cannot take it (they ignore it, refuse it without an account key, or
    raise ``TypeError``): give them the credential as ``credential=``.

    The difference from azure-core's policy is where the token lives. azure-core's policy keeps
    its own copy per client and refreshes it on its own schedule: ten clients sharing a credential
    ask it ten times at refresh time, and when one client answers a claims challenge the other
    nine keep the revoked copy and are each challenged in turn. This policy keeps no copy: it asks
    the credential for every request, so the credential's cache, its single-flight refresh and its
    stale-while-revalidate behaviour are the only ones. With
    :class:`mi_credential.ManagedIdentityCredential` a cache hit is a dictionary lookup.

    Behaviour matches azure-core's policy otherwise:

    - Only ``https`` URLs get a token (``ServiceRequestError`` otherwise), unless the request
      is sent with ``enforce_https=False``.
    - A request that azure-core's redirect policy sent on to another domain gets no token (where
      azure-core's policy signs it and relies on ``SensitiveHeaderCleanupPolicy`` to strip it).
    - A 401 whose ``WWW-Authenticate`` is a claims challenge (``error="insufficient_claims"``)
      leads to one token request with those claims (which bypasses the credential's cache) and
      one retry; whatever the retry answers is returned.
    - Any other 401 is returned as it is.
    - Subclasses may override :meth:`on_request`, :meth:`on_challenge`, :meth:`on_response`
      and :meth:`on_exception`, and call :meth:`authorize_request`, as with azure-core's policy.

    Use it with a credential that caches tokens, such as
    :class:`mi_credential.ManagedIdentityCredential` (or azure-identity's credentials): it
    asks the credential once per request.

    Args:
        credential: The credential: an object with an async ``get_token_info`` (preferred) or
            ``get_token``.
        scopes: The scopes to request, such as ``https://storage.azure.com/.default``.
        enable_cae: Request tokens capable of Continuous Access Evaluation.
        kwargs: Ignored. Generated SDK clients pass their other keywords to the authentication
            policy they build; azure-core's policy accepts them too.

    Raises:
        TypeError: ``credential`` has neither ``get_token_info`` nor ``get_token``.
        ValueError: No scope, or one that is not a scope (see
            :func:`mi_credential.http.check_scope`).
    """

    def __init__(
        self, credential: TokenProvider, *scopes: str, enable_cae: bool = False, **kwargs: Any
    ) -> None:
        super().__init__()
        self._tokens = TokenAdapter(credential)
        _check_scopes(scopes)
        self._credential = credential
        self._scopes = scopes
        self._enable_cae = bool(enable_cae)
        # Chosen once, so the per-request path builds no options; ``None`` (no CAE) keeps
        # ManagedIdentityCredential on its cache-hit fast path.
        self._options: TokenRequestOptions | None = (
            {"enable_cae": True} if self._enable_cae else None
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(scopes={self._scopes!r})"

    async def send(
        self, request: PipelineRequest[HTTPRequestType]
    ) -> PipelineResponse[HTTPRequestType, AsyncHTTPResponseType]:
        """Authorize the request, send it, and answer a claims challenge once.

        Args:
            request: The pipeline request.

        Returns:
            The pipeline response (the retry's, if a claims challenge was answered).

        Raises:
            ServiceRequestError: The URL is not https and ``enforce_https`` is not ``False``.
            azure.core.exceptions.ClientAuthenticationError: The credential could not provide
                a token (raised from the original 401 when answering a challenge).
        """
        # Hooks may be coroutines or plain functions, as azure-core allows; awaiting only what
        # is awaitable keeps the common path to one coroutine per hook.
        pending: Awaitable[None] | None = self.on_request(request)
        if pending is not None:
            await pending
        try:
            response = await self.next.send(request)
        except Exception:
            await _maybe_await(self.on_exception(request))
            raise
        pending = self.on_response(request, response)
        if pending is not None:
            await pending

        http_response = cast(Any, response.http_response)
        if http_response.status_code == 401 and "WWW-Authenticate" in http_response.headers:
            try:
                authorized = await self.on_challenge(request, response)
            except Exception as exc:
                if response.context.options.get("stream"):
                    # A streamed body is read so that the error carries it.
                    with contextlib.suppress(Exception):
                        await http_response.read()
                raise exc from HttpResponseError(response=http_response)
            if authorized:
                try:
                    response = await self.next.send(request)
                except Exception:
                    await _maybe_await(self.on_exception(request))
                    raise
                await _maybe_await(self.on_response(request, response))
        return response

    async def on_request(self, request: PipelineRequest[HTTPRequestType]) -> None:
        """Check the scheme and set the ``Authorization`` header (called before sending).

        Args:
            request: The pipeline request.

        Raises:
            ServiceRequestError: The URL is not https and ``enforce_https`` is not ``False``.
        """
        _enforce_https(request)
        if request.context.get("insecure_domain_change"):
            # azure-core's redirect policy followed a redirect to another domain: no token goes
            # there, even in a pipeline without azure-core's SensitiveHeaderCleanupPolicy.
            cast(Any, request.http_request).headers.pop("Authorization", None)
            return
        info = await self._tokens.get_token_info(*self._scopes, options=self._options)
        cast(Any, request.http_request).headers["Authorization"] = "Bearer " + info.token

    async def authorize_request(
        self, request: PipelineRequest[HTTPRequestType], *scopes: str, **kwargs: Any
    ) -> None:
        """Get a token for ``scopes`` with the given options and authorize the request with it.

        The token is not kept here: the credential caches it (a ``claims`` request replaces the
        credential's cached token, so every client sharing the credential gets it next).

        Args:
            request: The pipeline request.
            scopes: The scopes to request.
            kwargs: Token request options: ``claims``, ``tenant_id``, ``enable_cae``; other
                keywords go to ``get_token`` for credentials without ``get_token_info``.
        """
        if self._enable_cae:
            kwargs.setdefault("enable_cae", True)
        info = await self._tokens.get_token_info(*scopes, **kwargs)
        cast(Any, request.http_request).headers["Authorization"] = "Bearer " + info.token

    async def on_challenge(
        self,
        request: PipelineRequest[HTTPRequestType],
        response: PipelineResponse[HTTPRequestType, AsyncHTTPResponseType],
    ) -> bool:
        """Answer a 401 that carries ``WWW-Authenticate``.

        A claims challenge is answered with a token carrying the claims; any other challenge
        is not answered.

        Args:
            request: The request that was refused.
            response: The 401 response.

        Returns:
            Whether the request was authorized again and should be resent.
        """
        headers = cast(Any, response.http_response).headers
        claims = claims_challenge(headers.get("WWW-Authenticate"))
        if claims is None:
            return False
        _logger.debug("Answering a claims challenge with a new token for %s", self._scopes)
        await self.authorize_request(request, *self._scopes, claims=claims)
        return True

    def on_response(
        self,
        request: PipelineRequest[HTTPRequestType],
        response: PipelineResponse[HTTPRequestType, AsyncHTTPResponseType],
    ) -> Awaitable[None] | None:
        """Called with every response (before challenge handling); does nothing here.

        Args:
            request: The pipeline request.
            response: The pipeline response.

        Returns:
            ``None``, or an awaitable for subclasses that need one.
        """
        return None

    def on_exception(self, request: PipelineRequest[HTTPRequestType]) -> Awaitable[None] | None:
        """Called when the next policy raises, before the exception propagates; does nothing.

        Args:
            request: The pipeline request.

        Returns:
            ``None``, or an awaitable for subclasses that need one.
        """
        return None


def get_bearer_token_provider(
    credential: TokenProvider, *scopes: str
) -> Callable[[], Coroutine[Any, Any, str]]:
    """An async callable that returns a bearer token for ``scopes``, from the credential's cache.

    The equivalent of ``azure.identity.aio.get_bearer_token_provider`` for code that wants a plain
    token string (OpenAI clients, hand-written HTTP calls). Each call asks the credential, so the
    credential's cache and refresh behaviour apply; nothing is cached here.

    Args:
        credential: An object with an async ``get_token_info`` (preferred) or ``get_token``.
        scopes: The scopes to request.

    Returns:
        ``async () -> str``: the access token (without the ``Bearer`` prefix).

    Raises:
        TypeError: ``credential`` has neither ``get_token_info`` nor ``get_token``.
        ValueError: No scope, or one that is not a scope (see
            :func:`mi_credential.http.check_scope`).
    """
    tokens = TokenAdapter(credential)
    _check_scopes(scopes)

    async def provide_token() -> str:
        return (await tokens.get_token_info(*scopes)).token

    return provide_token


def _enforce_https(request: PipelineRequest[Any]) -> None:
    """azure-core's rule: ``enforce_https=False`` as a request option moves into the context,
    so it holds for the retries of that request too; otherwise only https gets a token."""
    option = request.context.options.pop("enforce_https", None)
    if option is False:
        request.context["enforce_https"] = False
    url: str = cast(Any, request.http_request).url
    if url[:8].lower() != "https://" and request.context.get("enforce_https", True):
        raise ServiceRequestError(_HTTPS_MESSAGE)


async def _maybe_await(result: Awaitable[None] | None) -> None:
    if result is not None:
        await result


def _check_scopes(scopes: tuple[Any, ...]) -> None:
    if not scopes:
        raise ValueError(
            "At least one scope is required, such as 'https://storage.azure.com/.default'."
        )
    for scope in scopes:
        check_scope(scope)
