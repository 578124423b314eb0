"""The emulator's own surface: admin routes, published key, wire formats of its errors."""

from __future__ import annotations

import aiohttp
import jwt
import pytest

from mi_credential import ManagedIdentitySource as S
from mi_credential.emulator import Emulator, Fault

from .conftest import CredentialFactory


async def test_faults_can_be_scripted_over_http(
    emulator: Emulator, make_credential: CredentialFactory
) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.post(
            emulator.http_url + "/emulator/faults",
            json=[{"source": "app_service", "status": 503, "times": 2},
                  {"source": "imds", "action": "drop"}],
        ) as response:
            assert response.status == 201
        async with session.get(emulator.http_url + "/emulator/faults") as response:
            assert [f["status"] for f in await response.json()] == [503, 500]
        async with session.post(emulator.http_url + "/emulator/faults", json={"colour": 1}) as response:
            assert response.status == 400
            assert "unknown fault fields: colour" in (await response.json())["error"]

    credential = make_credential(S.APP_SERVICE)
    await credential.get_token("https://vault.azure.net/.default")
    assert [r.status for r in emulator.requests] == [503, 503, 200]


async def test_request_log_over_http_masks_secrets(
    emulator: Emulator, make_credential: CredentialFactory
) -> None:
    await make_credential(S.APP_SERVICE).get_token("https://vault.azure.net/.default")
    async with aiohttp.ClientSession() as session:
        async with session.get(emulator.http_url + "/emulator/requests") as response:
            log = await response.json()
        assert len(log) == 1
        assert log[0]["headers"]["x-identity-header"] == "****"
        assert log[0]["query"] == [["api-version", "2019-08-01"], ["resource", "https://vault.azure.net"]]
        assert emulator.secret not in await response.text()
        async with session.delete(emulator.http_url + "/emulator/requests") as response:
            assert response.status == 204
    assert emulator.requests == []


async def test_environment_route(emulator: Emulator) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(emulator.http_url + "/emulator/environment/azure_ml") as response:
            assert await response.json() == emulator.environ(S.AZURE_ML)
        async with session.get(emulator.http_url + "/emulator/environment/mars") as response:
            assert response.status == 404


async def test_tokens_verify_against_the_published_jwks(
    emulator: Emulator, make_credential: CredentialFactory
) -> None:
    token = await make_credential(S.IMDS).get_token("https://vault.azure.net/.default")
    async with (
        aiohttp.ClientSession() as session,
        session.get(emulator.http_url + "/emulator/jwks") as response,
    ):
        jwks = await response.json()
    key = jwt.PyJWKSet.from_dict(jwks)[jwt.get_unverified_header(token.token)["kid"]]
    claims = jwt.decode(
        token.token, key.key, algorithms=["RS256"], audience="https://vault.azure.net",
        options={"verify_exp": False, "verify_iat": False, "verify_nbf": False},
    )
    assert claims["iss"] == f"https://sts.windows.net/{emulator.tenant_id}/"
    assert claims["tid"] == emulator.tenant_id
    assert {"oid", "appid", "iat", "nbf", "exp"} <= set(claims)
    assert claims["exp"] - claims["iat"] == emulator.token_lifetime
    with pytest.raises(jwt.InvalidAudienceError):
        emulator.verify(token.token, audience="https://storage.azure.com")


@pytest.mark.parametrize(
    ("path", "headers", "status", "body_key"),
    [
        ("/metadata/identity/oauth2/token?api-version=2018-02-01&resource=r", {}, 400, "error"),
        ("/metadata/identity/oauth2/token?resource=r", {"Metadata": "true"}, 400, "error"),
        ("/msi/token?api-version=2019-08-01&resource=r", {"X-IDENTITY-HEADER": "wrong"}, 401, "statusCode"),
    ],
)
async def test_endpoints_refuse_malformed_requests(
    emulator: Emulator, path: str, headers: dict, status: int, body_key: str
) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.get(emulator.http_url + path, headers=headers) as response,
    ):
        assert response.status == status
        assert body_key in await response.json()


def test_emulator_refuses_non_loopback_addresses() -> None:
    with pytest.raises(ValueError, match="loopback"):
        Emulator(host="0.0.0.0")  # noqa: S104 - the point of the test


async def test_fault_skip_and_callable_body(emulator: Emulator, make_credential: CredentialFactory) -> None:
    emulator.add_fault(
        Fault(source="azure_ml", status=500, skip=1, body=lambda r: {"error": r.param("resource")})
    )
    credential = make_credential(S.AZURE_ML)
    await credential.get_token("https://a/.default")
    await credential.get_token("https://b/.default")  # the skipped fault applies now, then a retry
    assert [r.status for r in emulator.requests] == [200, 500, 200]
