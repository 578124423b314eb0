"""BearerTokenPolicy against a real HTTPS server on 127.0.0.1, with tokens from the emulator.

Where the behaviour must match azure-core's ``AsyncBearerTokenCredentialPolicy``, the same test
runs with both policies and asserts the same observable result."""

from __future__ import annotations

import base64
import binascii
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp import web
from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ServiceRequestError,
)
from azure.core.pipeline.policies import AsyncBearerTokenCredentialPolicy

from mi_credential import ManagedIdentityCredential, ManagedIdentityError
from mi_credential.emulator import Emulator, Fault
from mi_credential_azure_core import BearerTokenPolicy, get_bearer_token_provider
from tests.conftest import FakeClock

from ._sdk import GeneratedStyleClient
from .conftest import Reply, ResourceServer, Tls

SOURCE = "app_service"
SCOPE = "https://vault.azure.net/.default"
AUDIENCE = "https://vault.azure.net"
CLAIMS = '{"access_token":{"nbf":{"essential":true,"value":"1700000000"}}}'
ENCODED_CLAIMS = base64.urlsafe_b64encode(CLAIMS.encode()).decode().rstrip("=")
CLAIMS_CHALLENGE = (
    'Bearer realm="", authorization_uri="https://login.microsoftonline.com/common/oauth2/'
    'authorize", client_id="00000003-0000-0000-c000-000000000000", '
    f'error="insufficient_claims", claims="{ENCODED_CLAIMS}"'
)

PolicyFactory = Callable[..., Any]
POLICIES: dict[str, PolicyFactory] = {
    "ours": BearerTokenPolicy,
    "azure-core": AsyncBearerTokenCredentialPolicy,
}


def status(code: int, headers: dict[str, str] | None = None) -> Reply:
    async def reply(request: web.Request) -> web.StreamResponse:
        return web.json_response({"status": code}, status=code, headers=headers or {})

    return reply


def challenge(header: str = CLAIMS_CHALLENGE) -> Reply:
    return status(401, {"WWW-Authenticate": header})


def token_requests(emulator: Emulator) -> int:
    return len(emulator.requests_for(SOURCE))


@pytest.fixture
def clock() -> FakeClock:
    """Real time at the start: azure-core's policy reads ``time.time()`` itself, so the token
    times the emulator and the credential use must agree with it."""
    return FakeClock(start=float(int(time.time())))


@pytest.fixture(params=sorted(POLICIES))
def policy_kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    return kind


@pytest.fixture
def credential(make_credential: Any) -> ManagedIdentityCredential:
    credential: ManagedIdentityCredential = make_credential(SOURCE, timeout=5)
    return credential


@pytest.fixture
async def clients(tls: Tls) -> AsyncIterator[Callable[..., GeneratedStyleClient]]:
    created: list[GeneratedStyleClient] = []

    def make(url: str, policy: Any, **kwargs: Any) -> GeneratedStyleClient:
        kwargs.setdefault("retry_total", 0)
        client = GeneratedStyleClient(
            url, authentication_policy=policy, connection_verify=tls.ca_file, **kwargs
        )
        created.append(client)
        return client

    yield make
    for client in created:
        await client.close()


# -- attaching tokens --------------------------------------------------------------------------


async def test_the_request_carries_a_token_for_the_scope(
    policy_kind: str,
    credential: ManagedIdentityCredential,
    emulator: Emulator,
    resource_server: ResourceServer,
    clients: Any,
) -> None:
    client = clients(resource_server.url, POLICIES[policy_kind](credential, SCOPE))
    for _ in range(3):
        assert (await client.send("GET", "secrets/a")).status_code == 200
    assert resource_server.tokens() == emulator.issued_tokens * 3
    assert emulator.verify(resource_server.tokens()[0], audience=AUDIENCE)["aud"] == AUDIENCE
    assert token_requests(emulator) == 1


async def test_the_policy_keeps_no_token_copy(
    credential: ManagedIdentityCredential,
    emulator: Emulator,
    resource_server: ResourceServer,
    clients: Any,
) -> None:
    """When the credential's token changes (here: one client answered a claims challenge),
    every other client sends the new token with its very next request."""
    first = clients(resource_server.url, BearerTokenPolicy(credential, SCOPE))
    second = clients(resource_server.url, BearerTokenPolicy(credential, SCOPE))
    await first.send("GET")
    await second.send("GET")
    resource_server.replies.append(challenge())
    assert (await first.send("GET")).status_code == 200
    assert (await second.send("GET")).status_code == 200
    old, new = emulator.issued_tokens
    assert resource_server.tokens() == [old, old, old, new, new]


# -- https ------------------------------------------------------------------------------------


async def test_plain_http_is_refused_before_a_token_is_fetched(
    policy_kind: str,
    credential: ManagedIdentityCredential,
    emulator: Emulator,
    resource_server: ResourceServer,
    clients: Any,
) -> None:
    client = clients(resource_server.http_url, POLICIES[policy_kind](credential, SCOPE))
    with pytest.raises(ServiceRequestError, match="non-TLS protected"):
        await client.send("GET")
    assert resource_server.authorizations == []
    assert token_requests(emulator) == 0


async def test_enforce_https_false_holds_for_the_retries_of_the_request(
    policy_kind: str,
    credential: ManagedIdentityCredential,
    resource_server: ResourceServer,
    clients: Any,
) -> None:
    client = clients(
        resource_server.http_url,
        POLICIES[policy_kind](credential, SCOPE),
        retry_total=2,
        retry_backoff_factor=0,
    )
    resource_server.replies.append(status(503))
    response = await client.send("GET", options={"enforce_https": False})
    assert response.status_code == 200
    assert len(resource_server.tokens()) == 2  # the retry was authorized too


# -- 401s -------------------------------------------------------------------------------------


async def test_a_claims_challenge_gets_one_forced_refresh_and_one_retry(
    policy_kind: str,
    credential: ManagedIdentityCredential,
    emulator: Emulator,
    resource_server: ResourceServer,
    clients: Any,
) -> None:
    client = clients(resource_server.url, POLICIES[policy_kind](credential, SCOPE))
    resource_server.replies.append(challenge())
    response = await client.send("GET")
    assert response.status_code == 200
    assert token_requests(emulator) == 2  # the claims bypassed the credential's cache
    assert resource_server.tokens() == emulator.issued_tokens


async def test_a_second_claims_challenge_is_returned(
    policy_kind: str,
    credential: ManagedIdentityCredential,
    emulator: Emulator,
    resource_server: ResourceServer,
    clients: Any,
) -> None:
    client = clients(resource_server.url, POLICIES[policy_kind](credential, SCOPE))
    resource_server.replies.extend([challenge(), challenge()])
    response = await client.send("GET")
    assert response.status_code == 401
    assert len(resource_server.authorizations) == 2
    assert token_requests(emulator) == 2


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"WWW-Authenticate": 'Bearer error="invalid_token", error_description="expired"'},
        {"WWW-Authenticate": 'Bearer error="insufficient_claims"'},
        {"WWW-Authenticate": 'Bearer error="insufficient_claims", claims=""'},
        {"WWW-Authenticate": 'Basic realm="storage"'},
    ],
    ids=["no-challenge", "invalid-token", "no-claims", "empty-claims", "basic"],
)
async def test_other_401s_are_returned_as_they_are(
    policy_kind: str,
    headers: dict[str, str],
    credential: ManagedIdentityCredential,
    emulator: Emulator,
    resource_server: ResourceServer,
    clients: Any,
) -> None:
    client = clients(resource_server.url, POLICIES[policy_kind](credential, SCOPE))
    resource_server.replies.append(status(401, headers))
    response = await client.send("GET")
    assert response.status_code == 401
    assert len(resource_server.authorizations) == 1
    assert token_requests(emulator) == 1
    # The next request goes out with the credential's cached token: nothing was refreshed.
    assert (await client.send("GET")).status_code == 200
    assert token_requests(emulator) == 1


@pytest.mark.parametrize(
    ("claims", "azure_core_raises"),
    [("a", binascii.Error), (base64.urlsafe_b64encode(b"\xff\xfe").decode(), UnicodeDecodeError)],
    ids=["not-base64", "not-utf8"],
)
async def test_undecodable_claims_are_not_answered(
    policy_kind: str,
    claims: str,
    azure_core_raises: type[Exception],
    credential: ManagedIdentityCredential,
    emulator: Emulator,
    resource_server: ResourceServer,
    clients: Any,
) -> None:
    """The one deliberate difference: azure-core lets the decoding error escape; we return the
    401 the service sent."""
    client = clients(resource_server.url, POLICIES[policy_kind](credential, SCOPE))
    resource_server.replies.append(
        challenge(f'Bearer error="insufficient_claims", claims="{claims}"')
    )
    if policy_kind == "azure-core":
        with pytest.raises(azure_core_raises):
            await client.send("GET")
    else:
        assert (await client.send("GET")).status_code == 401
    assert token_requests(emulator) == 1
    assert len(resource_server.authorizations) == 1


@pytest.mark.parametrize(
    "claims",
    [base64.urlsafe_b64encode(text.encode()).decode() for text in ("[1, 2]", "not json", '"x"')],
    ids=["json-array", "not-json", "json-string"],
)
async def test_claims_that_are_not_a_json_object_are_not_answered(
    policy_kind: str,
    claims: str,
    credential: ManagedIdentityCredential,
    emulator: Emulator,
    resource_server: ResourceServer,
    clients: Any,
) -> None:
    """Claims are a JSON object (the claims request parameter of OpenID Connect): anything else
    is not a claims challenge, so no token request bypasses the cache for it. azure-core's
    policy sends any decodable text to the credential as claims and retries."""
    client = clients(resource_server.url, POLICIES[policy_kind](credential, SCOPE))
    resource_server.replies.append(
        challenge(f'Bearer error="insufficient_claims", claims="{claims}"')
    )
    response = await client.send("GET")
    if policy_kind == "azure-core":
        assert response.status_code == 200
        assert token_requests(emulator) == 2
        assert len(resource_server.authorizations) == 2
    else:
        assert response.status_code == 401
        assert token_requests(emulator) == 1
        assert len(resource_server.authorizations) == 1


async def test_a_failed_claims_refresh_raises_from_the_401(
    policy_kind: str,
    credential: ManagedIdentityCredential,
    emulator: Emulator,
    resource_server: ResourceServer,
    clients: Any,
) -> None:
    client = clients(resource_server.url, POLICIES[policy_kind](credential, SCOPE))
    await client.send("GET")
    emulator.add_fault(Fault.status_code(400, source=SOURCE, times=None))
    resource_server.replies.append(challenge())
    with pytest.raises(ManagedIdentityError) as caught:
        await client.send("GET")
    assert isinstance(caught.value, ClientAuthenticationError)
    cause = caught.value.__cause__
    assert isinstance(cause, HttpResponseError) and cause.status_code == 401
    for secret in emulator.secrets():
        assert secret not in str(caught.value)
        assert secret not in repr(caught.value)


async def test_ten_clients_answer_a_revocation_with_one_token_request(
    policy_kind: str,
    credential: ManagedIdentityCredential,
    emulator: Emulator,
    resource_server: ResourceServer,
    clients: Any,
) -> None:
    """Continuous Access Evaluation: the service revokes the token every client holds and
    challenges it. Our policy: the first client's claims token replaces the credential's
    cached one, so the other nine never see a challenge (1 token request). azure-core's: every
    client keeps its own copy, is challenged, and sends its own claims request (10)."""
    group = [
        clients(resource_server.url, POLICIES[policy_kind](credential, SCOPE)) for _ in range(10)
    ]
    for client in group:
        await client.send("GET")
    revoked = set(emulator.issued_tokens)

    async def revoke(request: web.Request) -> web.StreamResponse:
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if token in revoked:
            return await challenge()(request)
        return web.json_response({"ok": True})

    resource_server.replies.extend([revoke] * 100)
    responses = [await client.send("GET") for client in group]
    assert [r.status_code for r in responses] == [200] * 10
    claims_requests = token_requests(emulator) - 1
    assert claims_requests == (1 if policy_kind == "ours" else 10)


# -- hooks ------------------------------------------------------------------------------------


async def test_a_subclass_answers_its_own_challenges_with_authorize_request(
    policy_kind: str,
    credential: ManagedIdentityCredential,
    emulator: Emulator,
    resource_server: ResourceServer,
    clients: Any,
) -> None:
    """As azure-storage's policy does: a challenge names another resource, and the subclass
    authorizes the retry for it with authorize_request."""
    base = POLICIES[policy_kind]

    class ResourceChallengePolicy(base):  # type: ignore[misc, valid-type]
        async def on_challenge(self, request: Any, response: Any) -> bool:
            header = response.http_response.headers["WWW-Authenticate"]
            resource = header.split('resource_id="')[1].split('"')[0]
            await self.authorize_request(request, resource + "/.default")
            return True

    client = clients(resource_server.url, ResourceChallengePolicy(credential, SCOPE))
    resource_server.replies.append(
        challenge(
            'Bearer authorization_uri="https://login", resource_id="https://storage.azure.com"'
        )
    )
    assert (await client.send("GET")).status_code == 200
    first, second = resource_server.tokens()
    assert emulator.verify(first, audience=AUDIENCE)
    assert emulator.verify(second, audience="https://storage.azure.com")


async def test_hooks_see_every_response_and_exception(
    policy_kind: str,
    credential: ManagedIdentityCredential,
    resource_server: ResourceServer,
    clients: Any,
) -> None:
    seen: list[object] = []

    base = POLICIES[policy_kind]

    class Recording(base):  # type: ignore[misc, valid-type]
        def on_response(self, request: Any, response: Any) -> None:
            seen.append(response.http_response.status_code)

        def on_exception(self, request: Any) -> None:
            seen.append("exception")

    client = clients(resource_server.url, Recording(credential, SCOPE))
    resource_server.replies.append(challenge())
    await client.send("GET")
    assert seen == [401, 200]

    unreachable = clients("https://127.0.0.1:9", Recording(credential, SCOPE))
    with pytest.raises(ServiceRequestError):
        await unreachable.send("GET")
    assert seen[-1] == "exception"


# -- options and credentials -------------------------------------------------------------------


async def test_enable_cae_asks_for_a_cae_capable_token(
    make_credential: Any, emulator: Emulator, resource_server: ResourceServer, clients: Any
) -> None:
    credential = make_credential("workload_identity")
    client = clients(resource_server.url, BearerTokenPolicy(credential, SCOPE, enable_cae=True))
    assert (await client.send("GET")).status_code == 200
    (request,) = emulator.requests_for("workload_identity")
    claims = json.loads(request.form_field("claims") or "{}")
    assert claims["access_token"]["xms_cc"]["values"] == ["CP1"]


class GetTokenOnly:
    """A credential with only ``get_token`` (the older protocol), forwarding to ours."""

    def __init__(self, credential: ManagedIdentityCredential) -> None:
        self.credential = credential
        self.calls: list[dict[str, Any]] = []

    async def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        self.calls.append(kwargs)
        return await self.credential.get_token(*scopes, **kwargs)


async def test_a_credential_with_only_get_token(
    credential: ManagedIdentityCredential,
    emulator: Emulator,
    resource_server: ResourceServer,
    clients: Any,
) -> None:
    legacy = GetTokenOnly(credential)
    client = clients(resource_server.url, BearerTokenPolicy(legacy, SCOPE))  # type: ignore[arg-type]
    resource_server.replies.append(challenge())
    assert (await client.send("GET")).status_code == 200
    assert legacy.calls == [{}, {"claims": CLAIMS}]
    assert resource_server.tokens() == emulator.issued_tokens


async def test_the_bearer_token_provider(
    credential: ManagedIdentityCredential, emulator: Emulator
) -> None:
    provide = get_bearer_token_provider(credential, SCOPE)
    first = await provide()
    second = await provide()
    assert first == second == emulator.issued_tokens[0]
    assert emulator.verify(first, audience=AUDIENCE)
    assert token_requests(emulator) == 1

    legacy = get_bearer_token_provider(GetTokenOnly(credential), SCOPE)  # type: ignore[arg-type]
    assert await legacy() == first


@pytest.mark.parametrize("factory", [BearerTokenPolicy, get_bearer_token_provider])
def test_bad_arguments_are_refused(factory: Any, credential: ManagedIdentityCredential) -> None:
    with pytest.raises(ValueError, match="At least one scope"):
        factory(credential)
    with pytest.raises(ValueError, match="non-empty string"):
        factory(credential, "")
    with pytest.raises(ValueError, match="non-empty string"):
        factory(credential, 42)
    with pytest.raises(TypeError, match="get_token_info or get_token"):
        factory("not a credential", SCOPE)


async def test_nothing_secret_in_the_policys_repr(
    credential: ManagedIdentityCredential,
    emulator: Emulator,
    resource_server: ResourceServer,
    clients: Any,
) -> None:
    policy: BearerTokenPolicy[Any, Any] = BearerTokenPolicy(credential, SCOPE)
    await clients(resource_server.url, policy).send("GET")
    assert repr(policy) == f"BearerTokenPolicy(scopes=('{SCOPE}',))"
    for secret in emulator.secrets():
        assert secret not in repr(policy)


# -- refresh windows ---------------------------------------------------------------------------


async def test_past_refresh_time_a_failing_endpoint_fails_no_request(
    credential: ManagedIdentityCredential,
    emulator: Emulator,
    clock: FakeClock,
    resource_server: ResourceServer,
    clients: Any,
) -> None:
    client = clients(resource_server.url, BearerTokenPolicy(credential, SCOPE))
    await client.send("GET")
    emulator.add_fault(Fault.status_code(503, source=SOURCE, times=None))
    clock.advance(12 * 3600 + 1)
    for _ in range(3):
        assert (await client.send("GET")).status_code == 200
    assert resource_server.tokens() == emulator.issued_tokens * 4


async def test_an_expired_token_and_a_failing_endpoint_fail_with_a_typed_error(
    credential: ManagedIdentityCredential,
    emulator: Emulator,
    clock: FakeClock,
    resource_server: ResourceServer,
    clients: Any,
) -> None:
    """The other side of the window: with no valid token left, the credential's failure is
    raised to the caller as a ClientAuthenticationError, and nothing is sent."""
    client = clients(resource_server.url, BearerTokenPolicy(credential, SCOPE))
    await client.send("GET")
    emulator.add_fault(Fault.status_code(503, source=SOURCE, times=None))
    clock.advance(24 * 3600)
    with pytest.raises(ClientAuthenticationError) as caught:
        await client.send("GET")
    assert isinstance(caught.value, ManagedIdentityError)
    assert caught.value.status_code == 503
    assert len(resource_server.authorizations) == 1
