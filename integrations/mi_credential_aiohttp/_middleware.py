"""The aiohttp client middleware and the signed-session factory."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import hdrs, payload

from mi_credential.http import TokenAdapter, bearer_challenge, decode_claims

from ._origins import OriginPolicy

if TYPE_CHECKING:
    from aiohttp import ClientHandlerType, ClientRequest, ClientResponse
    from azure.core.credentials_async import AsyncSupportsTokenInfo, AsyncTokenCredential

_logger = logging.getLogger("mi_credential_aiohttp")


class BearerTokenMiddleware:
    """aiohttp client middleware that adds ``Authorization: Bearer <token>`` to requests for the
    configured origins, with tokens from an Azure credential.

    aiohttp runs a client middleware once per redirect hop, so the decision is made for each
    hop's own URL: a redirect to an origin that is not configured carries no token, and one to
    another configured origin carries a token for that origin's scope. Plain http to a
    configured host raises :class:`InsecureTransportError` before anything is sent, unless the
    host is in ``allow_http``. A request that already has an ``Authorization`` header, or whose
    origin is not configured, is passed on untouched and the credential is not called.

    On a 401 response with a ``Bearer`` challenge to a request it signed, the middleware asks the
    credential once more, forwarding the challenge's ``claims`` if it has any, and resends the
    request once with the new token; the 401 is released first. The 401 is returned unchanged
    instead when the body cannot be sent again (an async iterable or stream, or a payload aiohttp
    reports as consumed), when the challenge's ``claims`` cannot be decoded, or when, without
    ``claims``, the credential returns the token that was just refused (resending it cannot
    succeed; a credential serves its cached token until it nears expiry).

    The credential caches tokens; the middleware asks it on every signed request and keeps no
    token itself. :class:`mi_credential.ManagedIdentityCredential` answers from its cache with
    no I/O, and concurrent requests on a cold credential share one token request.

    Args:
        credential: An azure-core async credential: an object with ``get_token_info``
            (preferred, ``AsyncSupportsTokenInfo``) or ``get_token`` (``AsyncTokenCredential``).
            It is not closed by the middleware.
        scopes: Either a mapping of origin to scope, such as
            ``{"api.contoso.com": "api://contoso-api/.default"}``, or one scope for every
            origin in ``hosts``. An origin is ``host``, ``host:port`` or ``https://host[:port]``;
            ``*.example.com`` matches every subdomain of ``example.com``. Without a port, an
            origin means port 443 (port 80 for plain http to an ``allow_http`` host).
        hosts: The origins that get tokens, when ``scopes`` is a single scope.
        allow_http: Hosts (names or addresses, no port) that may receive tokens over plain http,
            for local development. Each must also be covered by a configured origin.

    Raises:
        TypeError: ``credential`` has neither ``get_token_info`` nor ``get_token``.
        ValueError: The origins, scopes or ``allow_http`` are missing, malformed or
            inconsistent (an origin with a path or credentials, an ``http://`` origin, the same
            origin twice, an instance metadata address, an ``allow_http`` host with no scope).
    """

    __slots__ = ("_policy", "_tokens")

    def __init__(
        self,
        credential: AsyncTokenCredential | AsyncSupportsTokenInfo,
        scopes: str | Mapping[str, str],
        *,
        hosts: Iterable[str] | None = None,
        allow_http: Iterable[str] = (),
    ) -> None:
        self._tokens = TokenAdapter(credential)
        self._policy = OriginPolicy(_scope_map(scopes, hosts), allow_http)

    def __repr__(self) -> str:
        origins = ", ".join(f"{rule.entry!r}: {rule.scope!r}" for rule in self._policy.rules)
        return f"BearerTokenMiddleware({{{origins}}})"

    async def __call__(self, request: ClientRequest, handler: ClientHandlerType) -> ClientResponse:
        """Sign ``request`` if its origin is configured, send it, answer one Bearer challenge.

        Args:
            request: The request of this hop (aiohttp calls the middleware once per redirect).
            handler: The rest of the middleware chain.

        Returns:
            The response; for a challenged request that could be resent, the response to the
            resent request.

        Raises:
            InsecureTransportError: Plain http to a configured host not in ``allow_http``.
            azure.core.exceptions.ClientAuthenticationError: From the credential: no token.
        """
        headers = request.headers
        if hdrs.AUTHORIZATION in headers:
            return await handler(request)
        scope = self._policy.scope_for(request.url)
        if scope is None:
            return await handler(request)
        token = (await self._tokens.get_token_info(scope)).token
        headers[hdrs.AUTHORIZATION] = "Bearer " + token
        response = await handler(request)
        if response.status != 401:
            return response
        return await self._answer_challenge(request, handler, response, scope, token)

    async def _answer_challenge(
        self,
        request: ClientRequest,
        handler: ClientHandlerType,
        response: ClientResponse,
        scope: str,
        refused_token: str,
    ) -> ClientResponse:
        challenge = bearer_challenge(response.headers.getall(hdrs.WWW_AUTHENTICATE, ()))
        if challenge is None:
            return response
        origin = _origin(request)
        if not _replayable(request.body):
            _logger.debug(
                "%s answered 401 with a Bearer challenge; the request body cannot be sent again, "
                "so the 401 is returned",
                origin,
            )
            return response
        claims = None
        encoded_claims = challenge.params.get("claims")
        if encoded_claims is not None:
            claims = decode_claims(encoded_claims)
            if claims is None:
                _logger.warning(
                    "%s answered 401 with a Bearer challenge whose claims are not base64-encoded "
                    "JSON; the 401 is returned",
                    origin,
                )
                return response
        try:
            token = (await self._tokens.get_token_info(scope, claims=claims)).token
        except BaseException:
            response.release()
            raise
        if claims is None and token == refused_token:
            _logger.debug(
                "%s refused the current token for %s (401, Bearer challenge without claims); "
                "the credential has no newer one, so the 401 is returned",
                origin,
                scope,
            )
            return response
        _logger.debug(
            "%s answered 401 with a Bearer challenge%s; resending once with a new token",
            origin,
            " with claims" if claims else "",
        )
        response.release()
        # Let the first attempt's body writer settle before the payload is written again.
        await request.close()
        request.headers[hdrs.AUTHORIZATION] = "Bearer " + token
        return await handler(request)


def create_session(
    credential: AsyncTokenCredential | AsyncSupportsTokenInfo,
    scopes: str | Mapping[str, str],
    *,
    hosts: Iterable[str] | None = None,
    allow_http: Iterable[str] = (),
    **session_kwargs: Any,
) -> aiohttp.ClientSession:
    """An :class:`aiohttp.ClientSession` whose requests are signed by a
    :class:`BearerTokenMiddleware`. Call it inside a running event loop; close the session
    (``async with``) and, separately, the credential.

    Args:
        credential: The credential, as for :class:`BearerTokenMiddleware`.
        scopes: Origin-to-scope mapping, or one scope for every origin in ``hosts``.
        hosts: The origins that get tokens, when ``scopes`` is a single scope.
        allow_http: Hosts that may receive tokens over plain http (local development).
        session_kwargs: Passed to :class:`aiohttp.ClientSession`. Any ``middlewares`` given run
            before (outside) the signing middleware, so they never see the token.

    Returns:
        A new session.

    Raises:
        TypeError: ``credential`` is not an azure-core async credential.
        ValueError: The origins, scopes or ``allow_http`` are malformed or inconsistent.
    """
    middleware = BearerTokenMiddleware(credential, scopes, hosts=hosts, allow_http=allow_http)
    outer = session_kwargs.pop("middlewares", None) or ()
    middlewares = (*outer, middleware)
    return aiohttp.ClientSession(middlewares=middlewares, **session_kwargs)


def _scope_map(scopes: str | Mapping[str, str], hosts: Iterable[str] | None) -> dict[str, str]:
    if isinstance(scopes, str):
        if hosts is None or isinstance(hosts, str):
            raise ValueError(
                "With a single scope, pass hosts=[...]: the origins that get tokens for it "
                "(a token is never sent to an origin that is not listed)."
            )
        return dict.fromkeys(hosts, scopes)
    if hosts is not None:
        raise ValueError("Pass hosts only with a single scope; a mapping already names them.")
    if not isinstance(scopes, Mapping):
        raise ValueError(
            "scopes must be a scope string or a mapping of origin to scope, not "
            f"{type(scopes).__name__}."
        )
    return dict(scopes)


def _replayable(body: payload.Payload | bytes) -> bool:
    """Whether aiohttp can send this request body again. Async iterables and streams are read
    once; aiohttp marks other payloads it cannot rewind (an unseekable file) as consumed."""
    if not isinstance(body, payload.Payload):
        return True  # no body
    if isinstance(body, payload.AsyncIterablePayload):
        return False
    consumed = getattr(body, "consumed", None)
    if consumed is None:  # aiohttp 3.12.0, before reusable payloads: only bytes can be resent
        return isinstance(body, payload.BytesPayload)
    return not consumed


def _origin(request: ClientRequest) -> str:
    """The request's origin, for log lines: never the path or query (they can hold secrets,
    such as a SAS signature)."""
    url = request.url
    return f"{url.scheme}://{url.raw_host}:{url.port}"
