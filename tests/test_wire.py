"""For every source and identity kind, the request the credential sends to the emulator is the
one the protocol specification describes (with our fixes: percent-encoded values, per-source
resource ID names), and the token that comes back is the emulator's."""

from __future__ import annotations

import uuid

import pytest

from mi_credential import (
    CredentialUnavailableError,
    ManagedIdentityError,
    TokenRequestError,
)
from mi_credential import ManagedIdentitySource as S
from mi_credential.emulator import Emulator

from .conftest import CredentialFactory

SCOPE = "https://storage.azure.com/.default"
RESOURCE = "https://storage.azure.com"

# (source, identity kind) -> (method, path, api-version, identity parameter name or None,
#                             headers that must be sent)
EXPECTED = {
    S.IMDS: ("GET", "/metadata/identity/oauth2/token", "2018-02-01",
             {"client_id": "client_id", "object_id": "object_id", "resource_id": "msi_res_id"},
             {"metadata": "true"}),
    S.APP_SERVICE: ("GET", "/msi/token", "2019-08-01",
                    {"client_id": "client_id", "object_id": "object_id", "resource_id": "mi_res_id"},
                    {"x-identity-header": "<secret>"}),
    S.AZURE_ARC: ("GET", "/arc/token", "2020-06-01",
                  {"client_id": "client_id", "object_id": "object_id", "resource_id": "msi_res_id"},
                  {"metadata": "true"}),
    S.AZURE_ML: ("GET", "/azureml/token", "2017-09-01",
                 {"client_id": "clientid", "object_id": "object_id", "resource_id": "msi_res_id"},
                 {"secret": "<secret>"}),
    S.SERVICE_FABRIC: ("GET", "/metadata/identity/oauth2/token", "2019-07-01-preview", {},
                       {"secret": "<secret>"}),
}

KINDS = ["system_assigned", "client_id", "object_id", "resource_id"]


def identity_kwargs(emulator: Emulator, kind: str) -> dict:
    uami = emulator.user_identities[0]
    if kind == "system_assigned":
        return {}
    if kind == "client_id":
        return {"client_id": uami.client_id}
    return {"identity_config": {kind: getattr(uami, kind)}}


def common_headers_ok(record, secret: str) -> None:
    assert record.header("user-agent").startswith("mi-credential/")
    uuid.UUID(record.header("x-ms-client-request-id"))
    assert record.header("authorization") is None or record.source == "azure_arc"


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("source", [S.IMDS, S.APP_SERVICE, S.AZURE_ARC, S.AZURE_ML])
async def test_get_sources_send_the_specified_request(
    emulator: Emulator, make_credential: CredentialFactory, source: S, kind: str
) -> None:
    credential = make_credential(source, **identity_kwargs(emulator, kind))
    token = await credential.get_token(SCOPE)

    method, path, api_version, id_params, headers = EXPECTED[source]
    records = emulator.requests_for(source)
    final = records[-1]
    assert final.method == method
    assert final.path == path
    expected_query = [("api-version", api_version), ("resource", RESOURCE)]
    if kind != "system_assigned":
        uami = emulator.user_identities[0]
        expected_query.append((id_params[kind], getattr(uami, kind)))
    assert list(final.query) == expected_query
    for name, value in headers.items():
        assert final.header(name) == (emulator.secret if value == "<secret>" else value)
    assert final.header("metadata") == ("true" if source in (S.IMDS, S.AZURE_ARC) else None)
    assert final.form is None
    common_headers_ok(final, emulator.secret)

    claims = emulator.verify(token.token, audience=RESOURCE)
    expected_identity = (
        emulator.system_identity if kind == "system_assigned" else emulator.user_identities[0]
    )
    assert claims["oid"] == expected_identity.object_id
    assert claims["appid"] == expected_identity.client_id
    assert token.expires_on == int(emulator.clock()) + emulator.token_lifetime


async def test_arc_challenge_flow(emulator: Emulator, make_credential: CredentialFactory) -> None:
    credential = make_credential(S.AZURE_ARC)
    await credential.get_token(SCOPE)
    first, second = emulator.requests_for(S.AZURE_ARC)
    assert first.header("authorization") is None and first.status == 401
    assert second.header("authorization", ).startswith("Basic ")
    key = second.header("authorization").removeprefix("Basic ")
    assert key in emulator.secrets()
    assert second.status == 200
    assert first.header("x-ms-client-request-id") == second.header("x-ms-client-request-id")
    assert first.query == second.query


async def test_service_fabric_request_and_pinning(
    emulator: Emulator, make_credential: CredentialFactory
) -> None:
    # No CA is trusted here: the thumbprint alone authenticates the server.
    credential = make_credential(S.SERVICE_FABRIC, connection_verify=True)
    token = await credential.get_token(SCOPE)
    (record,) = emulator.requests_for(S.SERVICE_FABRIC)
    assert record.method == "GET"
    assert list(record.query) == [("api-version", "2019-07-01-preview"), ("resource", RESOURCE)]
    assert record.header("secret") == emulator.secret
    common_headers_ok(record, emulator.secret)
    assert emulator.verify(token.token, audience=RESOURCE)["oid"] == emulator.system_identity.object_id


@pytest.mark.parametrize("kind", KINDS[1:])
async def test_service_fabric_refuses_user_assigned_identities(
    emulator: Emulator, make_credential: CredentialFactory, kind: str
) -> None:
    credential = make_credential(S.SERVICE_FABRIC, **identity_kwargs(emulator, kind))
    with pytest.raises(ManagedIdentityError, match="not supported by the Service Fabric"):
        await credential.get_token(SCOPE)
    assert emulator.requests == []


async def test_cloud_shell_posts_the_resource(
    emulator: Emulator, make_credential: CredentialFactory
) -> None:
    credential = make_credential(S.CLOUD_SHELL)
    token = await credential.get_token(SCOPE)
    (record,) = emulator.requests_for(S.CLOUD_SHELL)
    assert record.method == "POST"
    assert record.path == "/cloudshell/token"
    assert record.query == ()
    assert record.form == (("resource", RESOURCE),)
    assert record.header("metadata") == "true"
    assert record.header("content-type") == "application/x-www-form-urlencoded"
    common_headers_ok(record, emulator.secret)
    assert emulator.verify(token.token, audience=RESOURCE)


@pytest.mark.parametrize("kind", KINDS[1:])
async def test_cloud_shell_refuses_user_assigned_identities_at_construction(
    emulator: Emulator, make_credential: CredentialFactory, kind: str
) -> None:
    with pytest.raises(ValueError, match="cloud shell"):
        make_credential(S.CLOUD_SHELL, **identity_kwargs(emulator, kind))


async def test_workload_identity_exchanges_the_federated_token(
    emulator: Emulator, make_credential: CredentialFactory
) -> None:
    credential = make_credential(S.WORKLOAD_IDENTITY)
    token = await credential.get_token(SCOPE)
    (record,) = emulator.requests_for(S.WORKLOAD_IDENTITY)
    assert record.method == "POST"
    assert record.path == f"/{emulator.tenant_id}/oauth2/v2.0/token"
    with open(emulator.token_file) as handle:
        assertion = handle.read()
    assert record.form == (
        ("client_assertion", assertion),
        ("client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"),
        ("client_id", emulator.workload_client_id),
        ("grant_type", "client_credentials"),
        ("scope", SCOPE),
    )
    common_headers_ok(record, emulator.secret)
    assert emulator.verify(token.token, audience=RESOURCE)["appid"] == emulator.workload_client_id


async def test_workload_identity_rereads_the_rotated_token_file(
    emulator: Emulator, make_credential: CredentialFactory
) -> None:
    credential = make_credential(S.WORKLOAD_IDENTITY)
    await credential.get_token(SCOPE)
    rotated = emulator.federated_token()
    with open(emulator.token_file, "w") as handle:
        handle.write(rotated)
    await credential.get_token("https://vault.azure.net/.default")
    assert emulator.requests_for(S.WORKLOAD_IDENTITY)[-1].form_field("client_assertion") == rotated


async def test_workload_identity_claims_tenant_and_cae(
    emulator: Emulator, make_credential: CredentialFactory
) -> None:
    credential = make_credential(S.WORKLOAD_IDENTITY)
    await credential.get_token(SCOPE, enable_cae=True)
    record = emulator.requests_for(S.WORKLOAD_IDENTITY)[-1]
    assert record.form_field("claims") == '{"access_token":{"xms_cc":{"values":["CP1"]}}}'
    with pytest.raises(ManagedIdentityError, match="not configured to acquire tokens for tenant"):
        await credential.get_token(SCOPE, tenant_id="another-tenant")


async def test_workload_identity_wrong_client_is_an_entra_error(
    emulator: Emulator, make_credential: CredentialFactory
) -> None:
    credential = make_credential(S.WORKLOAD_IDENTITY, client_id=str(uuid.uuid4()))
    with pytest.raises(TokenRequestError) as caught:
        await credential.get_token(SCOPE)
    assert caught.value.error_code == "unauthorized_client"
    assert "AADSTS700016" in str(caught.value)
    assert str(caught.value).startswith("Microsoft Entra ID answered HTTP 400")


@pytest.mark.parametrize("source", [S.IMDS, S.APP_SERVICE, S.AZURE_ARC, S.AZURE_ML])
async def test_unknown_user_assigned_identity(
    emulator: Emulator, make_credential: CredentialFactory, source: S
) -> None:
    credential = make_credential(source, client_id="00000000-0000-0000-0000-00000000beef")
    with pytest.raises(ManagedIdentityError) as caught:
        await credential.get_token(SCOPE)
    error = caught.value
    assert error.status_code == 400
    assert error.source is source
    if source is S.IMDS:
        assert isinstance(error, CredentialUnavailableError)
        assert "client_id=00000000-0000-0000-0000-00000000beef is not assigned" in str(error)
    else:
        assert isinstance(error, TokenRequestError)
    assert "Identity not found" in str(error)


async def test_imds_without_a_system_assigned_identity(
    clock, make_credential: CredentialFactory, emulator: Emulator
) -> None:
    emulator.system_identity = None
    credential = make_credential(S.IMDS)
    with pytest.raises(CredentialUnavailableError, match="No system-assigned managed identity"):
        await credential.get_token(SCOPE)


async def test_arc_agent_that_ignores_the_user_assigned_identity_is_refused(
    emulator: Emulator, make_credential: CredentialFactory
) -> None:
    emulator.arc_echo_identity = False
    credential = make_credential(S.AZURE_ARC, client_id=emulator.user_identities[0].client_id)
    with pytest.raises(ManagedIdentityError, match="did not confirm the requested user-assigned"):
        await credential.get_token(SCOPE)


async def test_azure_ml_date_formatted_expiry(
    emulator: Emulator, make_credential: CredentialFactory
) -> None:
    emulator.expires_on_format = "date"
    credential = make_credential(S.AZURE_ML)
    token = await credential.get_token(SCOPE)
    assert token.expires_on == int(emulator.clock()) + emulator.token_lifetime


async def test_no_source_is_unavailable_at_token_time() -> None:
    from mi_credential import ManagedIdentityCredential

    credential = ManagedIdentityCredential(environ={"IDENTITY_ENDPOINT": "http://127.0.0.1:1/x"})
    assert credential.source is None
    with pytest.raises(CredentialUnavailableError, match="No managed identity endpoint found"):
        await credential.get_token(SCOPE)
    with pytest.raises(CredentialUnavailableError, match="No managed identity endpoint found"):
        await credential.get_token_info(SCOPE)
    await credential.close()


async def test_workload_identity_claims_never_join_an_acquisition_without_them(
    emulator: Emulator, make_credential: CredentialFactory
) -> None:
    import asyncio

    credential = make_credential(S.WORKLOAD_IDENTITY)
    claims = '{"access_token":{"nbf":{"essential":true,"value":"1700000000"}}}'
    with emulator.hold():  # the first acquisition stays in flight
        plain = asyncio.ensure_future(credential.get_token(SCOPE))
        await emulator.wait_for_requests(1)
        asking = asyncio.ensure_future(credential.get_token(SCOPE, claims=claims))
        await emulator.wait_for_requests(2)  # sent while the first one is still unanswered
    with_claims = await asking
    await plain
    sent = [r.form_field("claims") for r in emulator.requests_for(S.WORKLOAD_IDENTITY)]
    assert sorted(sent, key=str) == sorted([None, claims], key=str)
    assert emulator.verify(with_claims.token)


async def test_managed_identity_claims_join_the_acquisition_in_flight(
    emulator: Emulator, make_credential: CredentialFactory
) -> None:
    import asyncio

    credential = make_credential(S.IMDS)
    with emulator.hold():  # the first acquisition stays in flight
        plain = asyncio.ensure_future(credential.get_token(SCOPE))
        await emulator.wait_for_requests(1)
        forced = asyncio.ensure_future(credential.get_token(SCOPE, claims='{"x":1}'))
        for _ in range(5):  # lets it reach the acquisition in flight (a fresh token is coming)
            await asyncio.sleep(0)
    assert await forced == await plain
    assert len(emulator.requests) == 1
