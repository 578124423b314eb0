"""The emulator's own surface: admin routes, published key, wire formats of its errors, and the
events tests wait on (requests recorded, responses written, responses held)."""

from __future__ import annotations

import asyncio
import gc
import tempfile
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest

from mi_credential import IdentityMismatchError
from mi_credential import ManagedIdentitySource as S
from mi_credential.emulator import EmulatedIdentity, Emulator, Fault

from .conftest import CredentialFactory, FakeClock, register_emulator


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


async def test_managed_identity_tokens_name_the_identity(
    emulator: Emulator, make_credential: CredentialFactory
) -> None:
    uami, system = emulator.user_identities[0], emulator.system_identity
    for identity, kwargs in ((system, {}), (uami, {"client_id": uami.client_id})):
        token = await make_credential(S.IMDS, **kwargs).get_token("https://vault.azure.net/.default")
        claims = emulator.verify(token.token)
        assert (claims["appid"], claims["oid"], claims["xms_mirid"]) == (
            identity.client_id, identity.object_id, identity.resource_id
        )
    token = await make_credential(S.WORKLOAD_IDENTITY).get_token("https://vault.azure.net/.default")
    claims = emulator.verify(token.token)
    assert claims["appid"] == emulator.workload_client_id and "xms_mirid" not in claims


def test_other_identity_faults_from_json() -> None:
    fault = Fault.from_json({"action": "other_identity", "source": "imds"})
    assert (fault.action, fault.source, fault.identity, fault.times) == (
        "other_identity", "imds", None, 1
    )
    named = {"client_id": "c", "object_id": "o", "resource_id": "/r"}
    fault = Fault.from_json({"action": "other_identity", "identity": named, "times": 2})
    assert fault.identity == EmulatedIdentity("c", "o", "/r")
    assert Fault.other_identity(fault.identity, source="imds", times=2) == Fault(
        source="imds", action="other_identity", status=200, times=2, identity=fault.identity
    )
    with pytest.raises(ValueError, match="identity must be an object"):
        Fault.from_json({"action": "other_identity", "identity": "c"})
    with pytest.raises(ValueError, match="identity must be an object of client_id") as caught:
        Fault.from_json({"action": "other_identity", "identity": {"client_id": "c"}})
    assert getattr(caught.value, "field", None) == "identity"


async def test_other_identity_faults_over_http(
    emulator: Emulator, make_credential: CredentialFactory
) -> None:
    stranger = EmulatedIdentity.create("stranger")
    async with aiohttp.ClientSession() as session:
        async with session.post(
            emulator.http_url + "/emulator/faults",
            json=[{"source": "app_service", "action": "other_identity"},
                  {"source": "app_service", "action": "other_identity", "identity": vars(stranger)}],
        ) as response:
            assert response.status == 201
        async with session.post(
            emulator.http_url + "/emulator/faults",
            json={"action": "other_identity", "identity": {"colour": 1}},
        ) as response:
            assert response.status == 400
    uami = emulator.user_identities[0]
    credential = make_credential(S.APP_SERVICE, identity_config={"resource_id": uami.resource_id})
    for returned in (emulator.system_identity, stranger):
        with pytest.raises(IdentityMismatchError) as caught:
            await credential.get_token("https://vault.azure.net/.default")
        assert caught.value.returned == f"resource_id={returned.resource_id}"
    assert await credential.get_token("https://vault.azure.net/.default")
    assert [r.status for r in emulator.requests] == [200, 200, 200]


# -- waiting on events -------------------------------------------------------------------------


def imds_get(session: aiohttp.ClientSession, emulator: Emulator, resource: str = "https://r") -> Any:
    """A token request to the IMDS endpoint, as a task."""

    async def get() -> int:
        async with session.get(
            emulator.http_url + "/metadata/identity/oauth2/token",
            params={"api-version": "2018-02-01", "resource": resource},
            headers={"Metadata": "true"},
        ) as response:
            await response.read()
            return response.status

    return asyncio.ensure_future(get())


async def test_wait_for_requests_returns_once_they_are_recorded(emulator: Emulator) -> None:
    async with aiohttp.ClientSession() as session:
        first, second = imds_get(session, emulator, "https://a"), imds_get(session, emulator, "https://b")
        records = await emulator.wait_for_requests(2)
        assert sorted(r.param("resource") for r in records) == ["https://a", "https://b"]
        assert await emulator.wait_for_requests(1, source=S.IMDS) == emulator.requests_for(S.IMDS)
        assert await emulator.wait_for_requests(0, source="app_service") == []
        assert await asyncio.gather(first, second) == [200, 200]


async def test_wait_for_requests_times_out_with_what_arrived(emulator: Emulator) -> None:
    async with aiohttp.ClientSession() as session:
        assert await imds_get(session, emulator) == 200
    with pytest.raises(TimeoutError) as caught:
        await emulator.wait_for_requests(2, timeout=0.01)
    message = str(caught.value)
    assert message.startswith("Waited 0.01 s for 2 token requests; the emulator has received 1")
    assert "imds: GET /metadata/identity/oauth2/token -> 200" in message
    with pytest.raises(TimeoutError, match=r"for 1 token request of app_service; .* received 0 token"):
        await emulator.wait_for_requests(source=S.APP_SERVICE, timeout=0.01)


async def test_a_held_request_is_recorded_but_not_answered_until_released(
    emulator: Emulator,
) -> None:
    async with aiohttp.ClientSession() as session:
        emulator.hold()
        request = imds_get(session, emulator)
        (record,) = await emulator.wait_for_requests(1)
        assert record.status is None
        assert emulator.held == 1
        assert not request.done()
        with pytest.raises(TimeoutError, match="1 held at the gate: release"):
            await emulator.wait_for_responses(1, timeout=0.01)
        assert emulator.issued == 0
        emulator.release()
        (answered,) = await emulator.wait_for_responses(1)
        assert answered.status == 200
        assert emulator.held == 0
        assert emulator.issued == 1
        assert await request == 200
        assert await imds_get(session, emulator) == 200  # released: no longer holding


async def test_hold_as_a_context_manager_releases_on_leaving(emulator: Emulator) -> None:
    async with aiohttp.ClientSession() as session:
        with emulator.hold():
            requests = [imds_get(session, emulator, f"https://r{i}") for i in range(3)]
            await emulator.wait_for_requests(3)
            assert emulator.held == 3
            assert [r.status for r in emulator.requests] == [None] * 3
        assert await asyncio.gather(*requests) == [200] * 3
    assert [r.status for r in await emulator.wait_for_responses(3)] == [200] * 3


async def test_close_releases_held_requests(clock: FakeClock) -> None:
    emulator = Emulator(clock=clock)
    register_emulator(emulator)
    await emulator.start()
    async with aiohttp.ClientSession() as session:
        emulator.hold()
        request = imds_get(session, emulator)
        await emulator.wait_for_requests(1)
        await asyncio.wait_for(emulator.close(), 5)
        assert await asyncio.wait_for(request, 5) == 200


async def test_fault_responses_count_as_responses(emulator: Emulator) -> None:
    emulator.add_fault(Fault.status_code(503, source="imds"))
    emulator.add_fault(Fault.drop(source="imds"))
    async with aiohttp.ClientSession() as session:
        assert await imds_get(session, emulator) == 503
        dropped = imds_get(session, emulator)
        answered = await emulator.wait_for_responses(2)
        assert [r.status for r in answered[:2]] == [503, 499]  # a drop's 499 is never sent
        await asyncio.gather(dropped, return_exceptions=True)  # (aiohttp may retry it)


async def test_clearing_the_log_restarts_the_counts(emulator: Emulator) -> None:
    async with aiohttp.ClientSession() as session:
        assert await imds_get(session, emulator) == 200
        with emulator.hold():
            request = imds_get(session, emulator, "https://after")
            await emulator.wait_for_requests(2)
            emulator.requests.clear()  # while a request is in flight
        assert await request == 200
        with pytest.raises(TimeoutError):
            await emulator.wait_for_requests(1, timeout=0.01)
        assert emulator.requests == []  # the request answered after the clear stays forgotten
        assert await imds_get(session, emulator, "https://next") == 200
        (record,) = await emulator.wait_for_responses(1)
        assert (record.param("resource"), record.status) == ("https://next", 200)


async def test_latency_still_delays_responses(emulator: Emulator) -> None:
    """The demo and the benchmarks use it; tests hold requests instead."""
    emulator.latency = 0.01
    async with aiohttp.ClientSession() as session:
        assert await imds_get(session, emulator) == 200
    assert emulator.issued == 1



def test_an_emulator_never_started_or_half_built_leaves_no_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "temp"))
    (tmp_path / "temp").mkdir()
    (tmp_path / "a-file").write_text("")
    with pytest.raises(NotADirectoryError):  # its Arc key directory cannot be made
        Emulator(arc_key_dir=str(tmp_path / "a-file" / "keys"))
    gc.collect()
    assert list((tmp_path / "temp").iterdir()) == []
    unstarted = Emulator()
    assert list((tmp_path / "temp").glob("mi-emulator-*"))  # its key and certificate
    del unstarted
    gc.collect()
    assert list((tmp_path / "temp").iterdir()) == []
