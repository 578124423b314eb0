"""BearerTokenMiddleware against a real protected API on 127.0.0.1 and the emulator."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import aiohttp
import pytest
from aiohttp import ClientHandlerType, ClientRequest, ClientResponse
from azure.core.credentials import AccessToken, AccessTokenInfo, TokenRequestOptions
from azure.core.exceptions import ClientAuthenticationError

from mi_credential import CredentialUnavailableError, ManagedIdentityCredential
from mi_credential.emulator import Emulator, Fault
from mi_credential_aiohttp import BearerTokenMiddleware, InsecureTransportError, create_session

from ...conftest import CredentialFactory, FakeClock
from .conftest import (
    API_AUDIENCE,
    API_HOST,
    API_SCOPE,
    BLOB_DOMAIN,
    EVIL_HOST,
    OTHER_AUDIENCE,
    OTHER_HOST,
    OTHER_SCOPE,
    STORAGE_AUDIENCE,
    STORAGE_SCOPE,
    LoopbackResolver,
    ProtectedApi,
    Tls,
)

SOURCE = "app_service"

SessionFactory = Callable[..., aiohttp.ClientSession]
ApiFactory = Callable[..., Any]


_D = TypeVar("_D", bound="Delegating")


class Delegating:
    """The lifecycle half of the azure-core credential protocols, delegated to ``inner``."""

    inner: ManagedIdentityCredential

    async def close(self) -> None:
        await self.inner.close()

    async def __aenter__(self: _D) -> _D:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


class RecordingCredential(Delegating):
    """Delegates to a real credential and records each call's scope and claims."""

    def __init__(self, inner: ManagedIdentityCredential) -> None:
        self.inner = inner
        self.calls: list[tuple[str, str | None]] = []

    async def get_token_info(
        self, *scopes: str, options: TokenRequestOptions | None = None
    ) -> AccessTokenInfo:
        self.calls.append((scopes[0], (options or {}).get("claims")))
        return await self.inner.get_token_info(*scopes, options=options)


class GetTokenOnlyCredential(Delegating):
    """An ``AsyncTokenCredential`` without ``get_token_info`` (older azure-identity credentials)."""

    def __init__(self, inner: ManagedIdentityCredential) -> None:
        self.inner = inner
        self.calls: list[tuple[str, str | None]] = []

    async def get_token(
        self, *scopes: str, claims: str | None = None, **kwargs: Any
    ) -> AccessToken:
        self.calls.append((scopes[0], claims))
        return await self.inner.get_token(*scopes, claims=claims, **kwargs)


def claims_challenge(claims: dict[str, Any]) -> tuple[str, str]:
    """A CAE claims challenge header value and the claims JSON it carries."""
    text = json.dumps(claims)
    encoded = base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")
    return (
        f'Bearer realm="", authorization_uri="https://login.microsoftonline.com/common/oauth2/'
        f'authorize", error="insufficient_claims", claims="{encoded}"',
        text,
    )


CLAIMS = {"access_token": {"nbf": {"essential": True, "value": "1800000000"}}}


def token_requests(emulator: Emulator) -> int:
    return len(emulator.requests_for(SOURCE))


# -- signing -----------------------------------------------------------------------------------


async def test_signs_a_request_with_a_token_the_api_accepts(
    emulator: Emulator,
    make_credential: CredentialFactory,
    api: ProtectedApi,
    make_session: SessionFactory,
) -> None:
    credential = make_credential(SOURCE)
    session = make_session(BearerTokenMiddleware(credential, {api.origin(): API_SCOPE}))

    async with session.get(api.url()) as response:
        assert response.status == 200
        body = await response.json()

    assert body["aud"] == API_AUDIENCE  # the API verified signature and audience
    [seen] = api.seen
    assert seen.token is not None
    assert emulator.verify(seen.token, audience=API_AUDIENCE)["aud"] == API_AUDIENCE
    assert token_requests(emulator) == 1


async def test_the_scope_is_chosen_per_origin(
    emulator: Emulator,
    make_credential: CredentialFactory,
    api: ProtectedApi,
    make_session: SessionFactory,
) -> None:
    credential = make_credential(SOURCE)
    middleware = BearerTokenMiddleware(
        credential,
        {
            api.origin(API_HOST): API_SCOPE,
            f"https://{api.origin(OTHER_HOST)}": OTHER_SCOPE,
            f"*.{BLOB_DOMAIN}:{api.port}": STORAGE_SCOPE,
        },
    )
    api.audiences["acct1.blob.contoso.test"] = STORAGE_AUDIENCE
    api.audiences["acct2.blob.contoso.test"] = STORAGE_AUDIENCE
    session = make_session(middleware)

    for host, audience in (
        (API_HOST, API_AUDIENCE),
        (OTHER_HOST, OTHER_AUDIENCE),
        ("acct1.blob.contoso.test", STORAGE_AUDIENCE),
        ("ACCT2.Blob.Contoso.Test", STORAGE_AUDIENCE),
        (API_HOST, API_AUDIENCE),
    ):
        async with session.get(api.url(host=host)) as response:
            assert response.status == 200, host
            assert (await response.json())["aud"] == audience

    # One token per scope: the credential's cache serves the rest.
    assert token_requests(emulator) == 3


async def test_one_scope_for_several_hosts(
    emulator: Emulator,
    make_credential: CredentialFactory,
    api: ProtectedApi,
    make_session: SessionFactory,
) -> None:
    api.audiences[OTHER_HOST] = API_AUDIENCE
    credential = make_credential(SOURCE)
    middleware = BearerTokenMiddleware(
        credential, API_SCOPE, hosts=[api.origin(API_HOST), api.origin(OTHER_HOST)]
    )
    session = make_session(middleware)
    for host in (API_HOST, OTHER_HOST):
        async with session.get(api.url(host=host)) as response:
            assert response.status == 200
    assert token_requests(emulator) == 1


async def test_other_origins_get_no_token_and_the_credential_is_not_called(
    emulator: Emulator,
    make_credential: CredentialFactory,
    api: ProtectedApi,
    start_api: ApiFactory,
    tls: Tls,
    make_session: SessionFactory,
) -> None:
    second = await start_api(tls.server)  # same host name, another port: another origin
    credential = RecordingCredential(make_credential(SOURCE))
    middleware = BearerTokenMiddleware(
        credential, {api.origin(API_HOST): API_SCOPE, f"*.{BLOB_DOMAIN}": STORAGE_SCOPE}
    )
    session = make_session(middleware)

    for url in (
        api.url("/open", host=EVIL_HOST),  # another host
        second.url("/open", host=API_HOST),  # another port
        api.url("/open", host=BLOB_DOMAIN),  # a wildcard does not cover the domain itself
        api.url("/open", host=f"acct.{BLOB_DOMAIN}"),  # port 443 configured, not this one
        api.url("/open", host=f"{API_HOST}.{EVIL_HOST}"),  # a suffix trick
    ):
        async with session.get(url) as response:
            assert response.status == 200

    assert [s.authorization for s in api.seen + second.seen] == [None] * 5
    assert credential.calls == []
    assert token_requests(emulator) == 0


async def test_an_explicit_authorization_header_is_left_alone(
    emulator: Emulator,
    make_credential: CredentialFactory,
    api: ProtectedApi,
    make_session: SessionFactory,
) -> None:
    credential = RecordingCredential(make_credential(SOURCE))
    session = make_session(BearerTokenMiddleware(credential, {api.origin(): API_SCOPE}))

    async with session.get(api.url("/open"), headers={"Authorization": "Basic dXNlcjpwdw=="}):
        pass

    assert api.seen[0].authorization == "Basic dXNlcjpwdw=="
    assert credential.calls == []


async def test_a_credential_with_only_get_token_is_supported(
    emulator: Emulator,
    make_credential: CredentialFactory,
    api: ProtectedApi,
    make_session: SessionFactory,
) -> None:
    credential = GetTokenOnlyCredential(make_credential(SOURCE))
    session = make_session(BearerTokenMiddleware(credential, {api.origin(): API_SCOPE}))
    challenge, claims = claims_challenge(CLAIMS)
    api.challenges.append(challenge)

    async with session.get(api.url()) as response:
        assert response.status == 200
        assert (await response.json())["aud"] == API_AUDIENCE

    assert credential.calls == [(API_SCOPE, None), (API_SCOPE, claims)]


async def test_a_websocket_handshake_is_signed(
    emulator: Emulator,
    make_credential: CredentialFactory,
    api: ProtectedApi,
    make_session: SessionFactory,
) -> None:
    credential = make_credential(SOURCE)
    session = make_session(BearerTokenMiddleware(credential, {api.origin(): API_SCOPE}))
    async with session.ws_connect(api.url("/ws").replace("https://", "wss://")) as socket:
        assert await socket.receive_str() == API_AUDIENCE


# -- redirects ---------------------------------------------------------------------------------


async def test_a_redirect_to_another_origin_arrives_without_the_token(
    emulator: Emulator,
    make_credential: CredentialFactory,
    api: ProtectedApi,
    make_session: SessionFactory,
) -> None:
    credential = make_credential(SOURCE)
    session = make_session(BearerTokenMiddleware(credential, {api.origin(): API_SCOPE}))
    target = api.url("/open", host=EVIL_HOST)

    for status in (301, 302, 303, 307, 308):
        async with session.get(
            api.url("/redirect", host=API_HOST), params={"to": target, "status": str(status)}
        ) as response:
            assert response.status == 200
            assert len(response.history) == 1

    first_hops = api.seen_at(API_HOST, "/redirect")
    assert len(first_hops) == 5 and all(hop.token for hop in first_hops)
    arrivals = api.seen_at(EVIL_HOST, "/open")
    assert len(arrivals) == 5
    assert [a.authorization for a in arrivals] == [None] * 5


async def test_a_naive_middleware_does_leak_on_redirect(
    emulator: Emulator,
    make_credential: CredentialFactory,
    api: ProtectedApi,
    make_session: SessionFactory,
) -> None:
    """The control for the test above: the API does see a token a middleware sends across."""
    credential = make_credential(SOURCE)

    async def naive(request: ClientRequest, handler: ClientHandlerType) -> ClientResponse:
        request.headers["Authorization"] = "Bearer " + (await credential.get_token(API_SCOPE)).token
        return await handler(request)

    session = make_session(naive)
    target = api.url("/open", host=EVIL_HOST)
    async with session.get(api.url("/redirect"), params={"to": target}) as response:
        assert response.status == 200

    [arrival] = api.seen_at(EVIL_HOST, "/open")
    assert arrival.token is not None


async def test_a_redirect_to_another_configured_origin_gets_that_origins_token(
    emulator: Emulator,
    make_credential: CredentialFactory,
    api: ProtectedApi,
    make_session: SessionFactory,
) -> None:
    credential = make_credential(SOURCE)
    session = make_session(
        BearerTokenMiddleware(
            credential, {api.origin(API_HOST): API_SCOPE, api.origin(OTHER_HOST): OTHER_SCOPE}
        )
    )
    async with session.get(
        api.url("/redirect"), params={"to": api.url("/data", host=OTHER_HOST)}
    ) as response:
        assert response.status == 200
        assert (await response.json())["aud"] == OTHER_AUDIENCE

    [first] = api.seen_at(API_HOST, "/redirect")
    [second] = api.seen_at(OTHER_HOST)
    assert first.token is not None and second.token is not None
    assert emulator.verify(first.token, audience=API_AUDIENCE)
    assert emulator.verify(second.token, audience=OTHER_AUDIENCE)


async def test_a_same_origin_redirect_keeps_the_token(
    emulator: Emulator,
    make_credential: CredentialFactory,
    api: ProtectedApi,
    make_session: SessionFactory,
) -> None:
    credential = make_credential(SOURCE)
    session = make_session(BearerTokenMiddleware(credential, {api.origin(): API_SCOPE}))
    async with session.post(
        api.url("/redirect"), params={"to": "/data", "status": "307"}, data=b"payload"
    ) as response:
        assert response.status == 200
        assert (await response.json())["body"] == "payload"
    assert len(api.seen_at(API_HOST)) == 1


async def test_a_redirect_down_to_plain_http_is_refused_before_it_is_sent(
    emulator: Emulator,
    make_credential: CredentialFactory,
    api: ProtectedApi,
    start_api: ApiFactory,
    make_session: SessionFactory,
) -> None:
    plain = await start_api(None)
    credential = make_credential(SOURCE)
    session = make_session(
        BearerTokenMiddleware(
            credential, {api.origin(): API_SCOPE, f"{API_HOST}:{plain.port}": API_SCOPE}
        )
    )
    with pytest.raises(InsecureTransportError):
        await session.get(api.url("/redirect"), params={"to": plain.url("/data", host=API_HOST)})
    assert plain.seen == []


# -- plain http --------------------------------------------------------------------------------


async def test_plain_http_to_a_configured_host_raises_before_anything_is_sent(
    emulator: Emulator,
    make_credential: CredentialFactory,
    start_api: ApiFactory,
    make_session: SessionFactory,
) -> None:
    plain: ProtectedApi = await start_api(None)
    credential = RecordingCredential(make_credential(SOURCE))
    session = make_session(BearerTokenMiddleware(credential, {plain.origin(): API_SCOPE}))

    with pytest.raises(InsecureTransportError) as raised:
        await session.get(plain.url())

    assert isinstance(raised.value, ValueError)
    assert raised.value.host == API_HOST
    assert "allow_http" in str(raised.value) and API_HOST in str(raised.value)
    assert plain.seen == []
    assert credential.calls == []
    assert token_requests(emulator) == 0


async def test_plain_http_is_signed_for_an_allowed_host(
    emulator: Emulator,
    make_credential: CredentialFactory,
    start_api: ApiFactory,
    make_session: SessionFactory,
) -> None:
    plain: ProtectedApi = await start_api(None)
    credential = make_credential(SOURCE)
    middleware = BearerTokenMiddleware(
        credential,
        {f"localhost:{plain.port}": API_SCOPE, f"127.0.0.1:{plain.port}": API_SCOPE},
        allow_http=["localhost"],
    )
    session = make_session(middleware)

    async with session.get(plain.url(host="localhost")) as response:
        assert response.status == 200
    with pytest.raises(InsecureTransportError):  # allowed per host, not per address
        await session.get(plain.url(host="127.0.0.1"))
    assert len(plain.seen) == 1


# -- challenges --------------------------------------------------------------------------------


async def test_a_claims_challenge_is_answered_once_with_a_new_token(
    emulator: Emulator,
    make_credential: CredentialFactory,
    api: ProtectedApi,
    make_session: SessionFactory,
) -> None:
    credential = RecordingCredential(make_credential(SOURCE))
    session = make_session(BearerTokenMiddleware(credential, {api.origin(): API_SCOPE}))
    challenge, claims = claims_challenge(CLAIMS)
    api.challenges.append(challenge)

    async with session.put(api.url(), json={"n": 1}) as response:
        assert response.status == 200
        assert json.loads((await response.json())["body"]) == {"n": 1}

    first, second = api.seen
    assert first.token != second.token
    assert first.body == second.body == b'{"n": 1}'
    assert emulator.verify(second.token or "", audience=API_AUDIENCE)
    assert credential.calls == [(API_SCOPE, None), (API_SCOPE, claims)]
    assert token_requests(emulator) == 2


async def test_a_second_challenge_is_returned_not_retried(
    emulator: Emulator,
    make_credential: CredentialFactory,
    api: ProtectedApi,
    make_session: SessionFactory,
) -> None:
    credential = make_credential(SOURCE)
    session = make_session(BearerTokenMiddleware(credential, {api.origin(): API_SCOPE}))
    challenge, _ = claims_challenge(CLAIMS)
    api.challenges.extend([challenge, challenge, challenge])

    async with session.get(api.url()) as response:
        assert response.status == 401
        assert await response.json() == {"error": "unauthorized"}  # readable, unchanged

    assert len(api.seen) == 2
    assert len(api.challenges) == 1
    assert token_requests(emulator) == 2


async def test_a_token_that_expired_in_flight_is_replaced_once(
    emulator: Emulator,
    make_credential: CredentialFactory,
    api: ProtectedApi,
    clock: FakeClock,
    make_session: SessionFactory,
) -> None:
    """A Bearer challenge without claims: the credential's current token is used if it is not
    the one the API refused."""
    credential = make_credential(SOURCE)
    session = make_session(BearerTokenMiddleware(credential, {api.origin(): API_SCOPE}))

    def expire_once() -> None:
        api.before_verify = None
        clock.advance(emulator.token_lifetime + 1)

    api.before_verify = expire_once
    async with session.get(api.url()) as response:
        assert response.status == 200

    first, second = api.seen
    assert first.token and second.token and first.token != second.token
    assert token_requests(emulator) == 2


async def test_a_challenge_to_the_current_token_without_claims_is_returned(
    emulator: Emulator,
    make_credential: CredentialFactory,
    api: ProtectedApi,
    make_session: SessionFactory,
) -> None:
    credential = RecordingCredential(make_credential(SOURCE))
    session = make_session(BearerTokenMiddleware(credential, {api.origin(): API_SCOPE}))
    api.challenges.append('Bearer realm="contoso", error="invalid_token"')

    async with session.get(api.url()) as response:
        assert response.status == 401
        assert "invalid_token" in response.headers["WWW-Authenticate"]
        assert await response.json() == {"error": "unauthorized"}

    assert len(api.seen) == 1  # resending the refused token could not succeed
    assert credential.calls == [(API_SCOPE, None), (API_SCOPE, None)]
    assert token_requests(emulator) == 1


@pytest.mark.parametrize(
    "challenge",
    [
        'Basic realm="contoso"',
        'Bearer error="insufficient_claims", claims="%%%not base64%%%"',
        'Bearer error="insufficient_claims", claims="WzEsMl0"',  # base64 of a JSON array
    ],
)
async def test_a_401_without_a_usable_bearer_challenge_is_returned(
    emulator: Emulator,
    make_credential: CredentialFactory,
    api: ProtectedApi,
    make_session: SessionFactory,
    challenge: str,
) -> None:
    credential = RecordingCredential(make_credential(SOURCE))
    session = make_session(BearerTokenMiddleware(credential, {api.origin(): API_SCOPE}))
    api.challenges.append(challenge)

    async with session.get(api.url()) as response:
        assert response.status == 401
        assert response.headers["WWW-Authenticate"] == challenge

    assert len(api.seen) == 1
    assert credential.calls == [(API_SCOPE, None)]


async def test_a_streamed_body_is_not_replayed(
    emulator: Emulator,
    make_credential: CredentialFactory,
    api: ProtectedApi,
    make_session: SessionFactory,
) -> None:
    credential = RecordingCredential(make_credential(SOURCE))
    session = make_session(BearerTokenMiddleware(credential, {api.origin(): API_SCOPE}))
    challenge, _ = claims_challenge(CLAIMS)
    api.challenges.append(challenge)
    produced: list[bytes] = []

    async def stream() -> AsyncIterator[bytes]:
        for chunk in (b"chunk-1;", b"chunk-2"):
            produced.append(chunk)
            yield chunk

    async with session.post(api.url(), data=stream()) as response:
        assert response.status == 401
        assert response.headers["WWW-Authenticate"] == challenge
        assert await response.json() == {"error": "unauthorized"}

    [seen] = api.seen
    assert seen.body == b"chunk-1;chunk-2"
    assert produced == [b"chunk-1;", b"chunk-2"]  # read once
    assert credential.calls == [(API_SCOPE, None)]
    assert token_requests(emulator) == 1


async def test_a_file_body_is_replayed(
    emulator: Emulator,
    make_credential: CredentialFactory,
    api: ProtectedApi,
    make_session: SessionFactory,
) -> None:
    credential = make_credential(SOURCE)
    session = make_session(BearerTokenMiddleware(credential, {api.origin(): API_SCOPE}))
    challenge, _ = claims_challenge(CLAIMS)
    api.challenges.append(challenge)

    async with session.post(api.url(), data=io.BytesIO(b"file content")) as response:
        assert response.status == 200
        assert (await response.json())["body"] == "file content"
    assert [s.body for s in api.seen] == [b"file content", b"file content"]


async def test_a_failed_token_request_in_a_challenge_raises_and_releases_the_401(
    emulator: Emulator,
    make_credential: CredentialFactory,
    api: ProtectedApi,
    make_session: SessionFactory,
) -> None:
    credential = make_credential(SOURCE, timeout=5)
    session = make_session(BearerTokenMiddleware(credential, {api.origin(): API_SCOPE}))
    challenge, _ = claims_challenge(CLAIMS)
    api.challenges.append(challenge)
    # The first token request succeeds; the one with the challenge's claims is refused.
    emulator.add_fault(Fault(source=SOURCE, status=400, body={"message": "refused"}, skip=1))

    with pytest.raises(ClientAuthenticationError):
        await session.get(api.url())
    assert len(api.seen) == 1


# -- concurrency and failures ------------------------------------------------------------------


async def test_500_concurrent_requests_on_a_cold_credential_make_one_token_request(
    emulator: Emulator,
    make_credential: CredentialFactory,
    start_api: ApiFactory,
    make_session: SessionFactory,
) -> None:
    plain: ProtectedApi = await start_api(None)
    credential = make_credential(SOURCE)
    middleware = BearerTokenMiddleware(
        credential, {f"127.0.0.1:{plain.port}": API_SCOPE}, allow_http=["127.0.0.1"]
    )
    session = make_session(middleware)

    async def call() -> int:
        async with session.get(plain.url(host="127.0.0.1")) as response:
            await response.read()
            return response.status

    statuses = await asyncio.gather(*(call() for _ in range(500)))

    assert statuses == [200] * 500
    assert token_requests(emulator) == 1
    assert len({s.token for s in plain.seen}) == 1


async def test_a_credential_failure_raises_its_error_and_sends_nothing(
    emulator: Emulator,
    make_credential: CredentialFactory,
    api: ProtectedApi,
    make_session: SessionFactory,
) -> None:
    credential = make_credential(SOURCE)
    session = make_session(BearerTokenMiddleware(credential, {api.origin(): API_SCOPE}))
    emulator.add_fault(Fault.status_code(400, source=SOURCE))

    with pytest.raises(ClientAuthenticationError) as raised:
        await session.get(api.url())

    assert not isinstance(raised.value, aiohttp.ClientError)
    assert api.seen == []


async def test_an_unavailable_credential_raises_credential_unavailable(
    api: ProtectedApi, make_session: SessionFactory
) -> None:
    # IDENTITY_ENDPOINT without IDENTITY_HEADER or IMDS_ENDPOINT: no source, and no I/O.
    environ = {"IDENTITY_ENDPOINT": "http://127.0.0.1:9/token"}
    async with ManagedIdentityCredential(environ=environ) as credential:
        session = make_session(BearerTokenMiddleware(credential, {api.origin(): API_SCOPE}))
        with pytest.raises(CredentialUnavailableError):
            await session.get(api.url())
    assert api.seen == []


# -- secrets -----------------------------------------------------------------------------------


async def test_no_token_in_logs_repr_or_errors(
    emulator: Emulator,
    make_credential: CredentialFactory,
    api: ProtectedApi,
    make_session: SessionFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    credential = make_credential(SOURCE)
    middleware = BearerTokenMiddleware(credential, {api.origin(): API_SCOPE})
    session = make_session(middleware)
    challenge, _ = claims_challenge(CLAIMS)
    api.challenges.append(challenge)
    with caplog.at_level(logging.DEBUG, logger="mi_credential_aiohttp"):
        async with session.get(api.url(), params={"sig": "sas-canary"}) as response:
            assert response.status == 200
    tokens = [s.token for s in api.seen if s.token]
    assert len(tokens) == 2
    texts = [r.getMessage() for r in caplog.records] + [repr(middleware), repr(session)]
    assert any(r.name == "mi_credential_aiohttp" for r in caplog.records)
    for text in texts:
        assert "sas-canary" not in text
        for token in tokens:
            assert token not in text


# -- the session factory -----------------------------------------------------------------------


async def test_create_session_signs_and_keeps_the_callers_middlewares_outside(
    emulator: Emulator,
    make_credential: CredentialFactory,
    api: ProtectedApi,
    tls: Tls,
) -> None:
    credential = make_credential(SOURCE)
    outer_saw: list[str | None] = []

    async def outer(request: ClientRequest, handler: ClientHandlerType) -> ClientResponse:
        outer_saw.append(request.headers.get("Authorization"))
        return await handler(request)

    async with (
        create_session(
            credential,
            {api.origin(): API_SCOPE},
            middlewares=(outer,),
            connector=aiohttp.TCPConnector(ssl=tls.client, resolver=LoopbackResolver()),
        ) as session,
        session.get(api.url()) as response,
    ):
        assert response.status == 200

    assert outer_saw == [None]
    assert api.seen[0].token is not None


async def test_create_session_with_one_scope(
    emulator: Emulator,
    make_credential: CredentialFactory,
    api: ProtectedApi,
    tls: Tls,
) -> None:
    credential = make_credential(SOURCE)
    async with (
        create_session(
            credential,
            API_SCOPE,
            hosts=[api.origin()],
            connector=aiohttp.TCPConnector(ssl=tls.client, resolver=LoopbackResolver()),
        ) as session,
        session.get(api.url()) as response,
    ):
        assert response.status == 200
