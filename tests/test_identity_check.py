"""Against the emulator: a token for another identity than the user-assigned one requested (a
platform that ignores the identity selector) is refused with ``IdentityMismatchError``, naming
both identities and not the token, and is not cached; system-assigned requests and opaque tokens
are not checked."""

from __future__ import annotations

import pytest

from mi_credential import IdentityMismatchError, ManagedIdentityError
from mi_credential import ManagedIdentitySource as S
from mi_credential.emulator import EmulatedIdentity, Emulator, Fault

from .conftest import CredentialFactory

SCOPE = "https://storage.azure.com/.default"
RESOURCE = "https://storage.azure.com"
KINDS = ["client_id", "object_id", "resource_id"]
SELECTING_SOURCES = [S.IMDS, S.APP_SERVICE, S.AZURE_ML]


def identity_kwargs(identity: EmulatedIdentity, kind: str) -> dict:
    if kind == "client_id":
        return {"client_id": identity.client_id}
    return {"identity_config": {kind: getattr(identity, kind)}}


async def mismatch(credential) -> IdentityMismatchError:
    with pytest.raises(IdentityMismatchError) as caught:
        await credential.get_token(SCOPE)
    return caught.value


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("source", SELECTING_SOURCES)
async def test_the_system_assigned_token_for_a_user_assigned_request_is_refused_and_not_cached(
    emulator: Emulator, make_credential: CredentialFactory, source: S, kind: str
) -> None:
    uami, system = emulator.user_identities[0], emulator.system_identity
    emulator.add_fault(Fault.other_identity(source=source))
    credential = make_credential(source, **identity_kwargs(uami, kind))

    error = await mismatch(credential)
    requested = f"user-assigned identity {kind}={getattr(uami, kind)}"
    returned = f"{kind}={getattr(system, kind)}"
    assert (error.requested, error.returned) == (requested, returned)
    assert requested in str(error) and returned in str(error)
    assert (error.source, error.status_code, error.attempts) == (source, 200, 1)
    (wrong_token,) = emulator.issued_tokens
    assert emulator.verify(wrong_token)["oid"] == system.object_id  # a genuine token, signed
    assert wrong_token not in str(error) and wrong_token not in repr(error)
    assert len(emulator.requests_for(source)) == 1  # refused at once, not retried

    # Nothing was cached: the next call asks again, and gets the identity requested.
    token = await credential.get_token(SCOPE)
    assert len(emulator.requests_for(source)) == 2
    claims = emulator.verify(token.token, audience=RESOURCE)
    assert (claims["appid"], claims["oid"], claims["xms_mirid"]) == (
        uami.client_id, uami.object_id, uami.resource_id
    )
    assert await credential.get_token(SCOPE) == token  # and that one is cached
    assert len(emulator.requests_for(source)) == 2


@pytest.mark.parametrize("source", [S.IMDS, S.APP_SERVICE])
async def test_a_token_for_a_stranger_is_refused(
    emulator: Emulator, make_credential: CredentialFactory, source: S
) -> None:
    stranger = EmulatedIdentity.create("stranger")
    emulator.add_fault(Fault.other_identity(stranger, source=source))
    uami = emulator.user_identities[0]
    error = await mismatch(make_credential(source, identity_config={"object_id": uami.object_id}))
    assert error.returned == f"object_id={stranger.object_id}"


async def test_without_a_system_assigned_identity_a_fresh_one_answers(
    emulator: Emulator, make_credential: CredentialFactory
) -> None:
    emulator.system_identity = None
    emulator.add_fault(Fault.other_identity())
    uami = emulator.user_identities[0]
    error = await mismatch(make_credential(S.IMDS, client_id=uami.client_id))
    assert error.returned.startswith("client_id=")
    assert error.returned != f"client_id={uami.client_id}"


async def test_identifiers_are_compared_case_insensitively(
    emulator: Emulator, make_credential: CredentialFactory
) -> None:
    uami = emulator.user_identities[0]
    for kind in KINDS:
        upper = EmulatedIdentity(**{**vars(uami), kind: getattr(uami, kind).upper()})
        credential = make_credential(S.IMDS, **identity_kwargs(upper, kind))
        token = await credential.get_token(SCOPE)
        assert emulator.verify(token.token)["oid"] == uami.object_id


async def test_azure_arc_refuses_it_by_its_echo(
    emulator: Emulator, make_credential: CredentialFactory
) -> None:
    # The agent's challenge is the first request, the token request the second.
    emulator.add_fault(Fault.other_identity(source="azure_arc", times=2))
    credential = make_credential(S.AZURE_ARC, client_id=emulator.user_identities[0].client_id)
    with pytest.raises(ManagedIdentityError, match="did not confirm the requested user-assigned"):
        await credential.get_token(SCOPE)
    token = await credential.get_token(SCOPE)
    assert emulator.verify(token.token)["appid"] == emulator.user_identities[0].client_id


async def test_workload_identity_refuses_another_application_s_token(
    emulator: Emulator, make_credential: CredentialFactory
) -> None:
    emulator.add_fault(Fault.other_identity(source="workload_identity"))
    credential = make_credential(S.WORKLOAD_IDENTITY)
    error = await mismatch(credential)
    assert error.requested == f"application client_id={emulator.workload_client_id}"
    assert error.returned == f"client_id={emulator.system_identity.client_id}"
    token = await credential.get_token(SCOPE)
    assert emulator.verify(token.token)["appid"] == emulator.workload_client_id


@pytest.mark.parametrize("source", [S.IMDS, S.APP_SERVICE, S.AZURE_ML, S.SERVICE_FABRIC, S.CLOUD_SHELL])
async def test_system_assigned_requests_are_not_checked(
    emulator: Emulator, make_credential: CredentialFactory, source: S
) -> None:
    other = EmulatedIdentity.create("other")
    emulator.add_fault(Fault.other_identity(other, source=source))
    token = await make_credential(source).get_token(SCOPE)
    assert emulator.verify(token.token)["oid"] == other.object_id


async def test_identity_config_entries_unknown_to_us_are_not_checked(
    emulator: Emulator, make_credential: CredentialFactory
) -> None:
    emulator.add_fault(Fault.other_identity(EmulatedIdentity.create("other"), source="imds"))
    credential = make_credential(S.IMDS, identity_config={"mi_res_id": "/subscriptions/x/uami"})
    assert await credential.get_token(SCOPE)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("source", [S.IMDS, S.APP_SERVICE])
async def test_opaque_tokens_are_accepted(
    emulator: Emulator, make_credential: CredentialFactory, source: S, kind: str
) -> None:
    body = {"access_token": "opaque", "expires_in": 3600, "token_type": "Bearer"}
    emulator.add_fault(Fault.json_body(body, source=source))
    credential = make_credential(source, **identity_kwargs(emulator.user_identities[0], kind))
    assert (await credential.get_token(SCOPE)).token == "opaque"
