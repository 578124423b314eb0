"""Workload identity's federated token file: re-read when it changed, not per acquisition, and
read again (once, whatever its stat) when Microsoft Entra ID refuses the token as expired."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from mi_credential import CredentialUnavailableError, TokenRequestError
from mi_credential import ManagedIdentitySource as S
from mi_credential._environment import SourceConfig, build_identity
from mi_credential._files import read_federated_token, read_local_file
from mi_credential._models import FileRead, LocalFile, RawResponse, TokenRequest
from mi_credential._sources import create_source
from mi_credential._sources.workload_identity import assertion_expired
from mi_credential.emulator import Emulator

from .conftest import CredentialFactory, FakeClock

SCOPE = "https://storage.azure.com/.default"
OLD = 1_700_000_000_000_000_000
"""A modification time (ns) long past: the file's stat is trusted, not re-read as racy."""

EXPIRED = {
    "error": "invalid_client",
    "error_description": "AADSTS700024: Client assertion is not within its valid time range.",
}
CONFIG = SourceConfig(
    S.WORKLOAD_IDENTITY, "https://login.microsoftonline.com", "t",
    tenant_id="tenant", client_id="app", token_file="/f",
)


def response(status: int, body: object) -> RawResponse:
    return RawResponse(status, "", {"content-type": "application/json"}, json.dumps(body).encode())


OK = response(200, {"access_token": "at", "expires_in": 3600})


def start_flow(first_assertion: str = "old-jwt"):
    src = create_source(CONFIG, build_identity(None, None))
    flow = src.flow(src.target([SCOPE], None), None)
    assert next(flow) == FileRead(LocalFile.FEDERATED_TOKEN, "/f")
    request = flow.send(first_assertion)
    assert isinstance(request, TokenRequest)
    return flow


def finish(flow, reply: object) -> RawResponse:
    with pytest.raises(StopIteration) as done:
        flow.send(reply)
    return done.value.value


# -- the flow, stepped by hand ----------------------------------------------------------------


@pytest.mark.parametrize("status", [400, 401])
def test_an_expired_assertion_is_read_again_and_a_new_one_sent_once(status: int) -> None:
    flow = start_flow()
    refusal = response(status, EXPIRED)
    assert flow.send(refusal) == FileRead(LocalFile.FEDERATED_TOKEN, "/f", fresh=True)
    resent = flow.send("new-jwt")
    assert isinstance(resent, TokenRequest)
    assert dict(resent.form or ())["client_assertion"] == "new-jwt"
    assert "new-jwt" in resent.secrets and "old-jwt" not in resent.secrets
    again = response(status, EXPIRED)
    assert finish(flow, again) is again  # one retry only: its answer is final


def test_an_expired_assertion_with_nothing_new_in_the_file_is_the_answer() -> None:
    flow = start_flow()
    refusal = response(400, EXPIRED)
    assert flow.send(refusal) == FileRead(LocalFile.FEDERATED_TOKEN, "/f", fresh=True)
    assert finish(flow, "old-jwt") is refusal


@pytest.mark.parametrize(
    "answer",
    [
        OK,
        response(400, {"error": "unauthorized_client", "error_description": "AADSTS700016: no"}),
        response(401, {"error": "invalid_client", "error_description": "AADSTS700213: no"}),
        response(500, EXPIRED),
        RawResponse(400, "", {"content-type": "text/plain"}, b"AADSTS700024"),
    ],
)
def test_any_other_answer_is_returned_at_once(answer: RawResponse) -> None:
    assert not assertion_expired(answer)
    assert finish(start_flow(), answer) is answer


# -- the file and its cache ---------------------------------------------------------------------


def write(path: Path, text: str, mtime_ns: int | None = OLD) -> None:
    path.write_text(text)
    if mtime_ns is not None:
        os.utime(path, ns=(mtime_ns, mtime_ns))


def test_an_unchanged_file_is_not_read_again(tmp_path: Path) -> None:
    path = tmp_path / "token"
    write(path, "first-jwt")
    assert read_federated_token(str(path)) == "first-jwt"
    write(path, "other-jwt")  # same size, same inode, modification time restored
    assert read_federated_token(str(path)) == "first-jwt"
    assert read_local_file(FileRead(LocalFile.FEDERATED_TOKEN, str(path))) == "first-jwt"


def test_a_changed_modification_time_or_size_is_read_again(tmp_path: Path) -> None:
    path = tmp_path / "token"
    write(path, "first-jwt")
    assert read_federated_token(str(path)) == "first-jwt"
    write(path, "other-jwt", OLD + 1_000_000_000)
    assert read_federated_token(str(path)) == "other-jwt"
    write(path, "longer-jwt", OLD + 1_000_000_000)
    assert read_federated_token(str(path)) == "longer-jwt"


def test_a_file_replaced_as_the_kubelet_does_is_read_again(tmp_path: Path) -> None:
    path = tmp_path / "token"
    write(path, "first-jwt")
    assert read_federated_token(str(path)) == "first-jwt"
    replacement = tmp_path / "token.new"
    write(replacement, "other-jwt")  # same size and modification time, another file
    os.replace(replacement, path)
    assert read_federated_token(str(path)) == "other-jwt"


def test_fresh_always_reads_the_file(tmp_path: Path) -> None:
    path = tmp_path / "token"
    write(path, "first-jwt")
    assert read_federated_token(str(path)) == "first-jwt"
    write(path, "other-jwt")
    assert read_local_file(FileRead(LocalFile.FEDERATED_TOKEN, str(path), fresh=True)) == "other-jwt"
    assert read_federated_token(str(path)) == "other-jwt"  # and the cache holds what it read


def test_a_file_modified_just_before_it_was_read_is_read_again(tmp_path: Path) -> None:
    # Written again within the file system's timestamp granularity, its stat would not change.
    path = tmp_path / "token"
    recent = time.time_ns()
    write(path, "first-jwt", recent)
    assert read_federated_token(str(path)) == "first-jwt"
    write(path, "other-jwt", recent)
    assert read_federated_token(str(path)) == "other-jwt"


@pytest.mark.parametrize("content", [None, "", "  \n"])
def test_a_missing_or_empty_file_is_unavailable(tmp_path: Path, content: str | None) -> None:
    path = tmp_path / "token"
    if content is not None:
        write(path, content)
    with pytest.raises(CredentialUnavailableError, match="federated token file") as caught:
        read_federated_token(str(path))
    assert str(path) in str(caught.value)


def test_a_file_that_became_unreadable_is_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "token"
    write(path, "first-jwt")
    assert read_federated_token(str(path)) == "first-jwt"
    path.write_bytes(b"\xff\xfe-jwt\xff")
    with pytest.raises(CredentialUnavailableError, match="cannot be read") as caught:
        read_federated_token(str(path))
    assert "jwt" not in str(caught.value).replace(str(path), "")


# -- against the emulator -------------------------------------------------------------------------


def assertions(emulator: Emulator) -> list[str | None]:
    return [r.form_field("client_assertion") for r in emulator.requests_for(S.WORKLOAD_IDENTITY)]


async def test_a_rotated_token_file_is_used_on_the_next_acquisition(
    emulator: Emulator, make_credential: CredentialFactory, clock: FakeClock
) -> None:
    first = emulator.federated_token()
    write(Path(emulator.token_file), first)
    credential = make_credential(S.WORKLOAD_IDENTITY)
    await credential.get_token(SCOPE)
    await credential.get_token("https://vault.azure.net/.default")
    clock.advance(60)
    rotated = emulator.federated_token()
    assert rotated != first
    write(Path(emulator.token_file), rotated, OLD + 60_000_000_000)
    await credential.get_token("https://management.azure.com/.default")
    assert assertions(emulator) == [first, first, rotated]


async def test_an_expired_cached_token_is_read_again_and_sent_once_more(
    emulator: Emulator, make_credential: CredentialFactory, clock: FakeClock
) -> None:
    first = emulator.federated_token(lifetime=60)
    write(Path(emulator.token_file), first)
    credential = make_credential(S.WORKLOAD_IDENTITY)
    await credential.get_token(SCOPE)
    clock.advance(120)  # the first token has expired
    rotated = emulator.federated_token(lifetime=60)
    assert len(rotated) == len(first)
    # Rotated in place within the same timestamp: the file's stat does not tell.
    write(Path(emulator.token_file), rotated)
    token = await credential.get_token("https://vault.azure.net/.default")
    assert emulator.verify(token.token)["appid"] == emulator.workload_client_id
    assert assertions(emulator) == [first, first, rotated]


async def test_an_expired_token_and_nothing_new_is_the_entra_error(
    emulator: Emulator, make_credential: CredentialFactory, clock: FakeClock
) -> None:
    write(Path(emulator.token_file), emulator.federated_token(lifetime=60), None)
    clock.advance(120)
    credential = make_credential(S.WORKLOAD_IDENTITY)
    with pytest.raises(TokenRequestError) as caught:
        await credential.get_token(SCOPE)
    assert caught.value.status_code == 401 and caught.value.error_code == "invalid_client"
    assert (caught.value.error_description or "").startswith(
        "AADSTS700024: Client assertion is not within its valid time range."
    )
    assert len(assertions(emulator)) == 1


async def test_an_assertion_that_is_no_token_is_not_taken_for_an_expired_one(
    emulator: Emulator, make_credential: CredentialFactory
) -> None:
    write(Path(emulator.token_file), "not-a-jwt", None)
    credential = make_credential(S.WORKLOAD_IDENTITY)
    with pytest.raises(TokenRequestError) as caught:
        await credential.get_token(SCOPE)
    assert (caught.value.error_description or "").startswith("AADSTS50027")
    assert assertions(emulator) == ["not-a-jwt"]
