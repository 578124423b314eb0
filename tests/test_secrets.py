"""Secrets never leak: canary values for the identity header, tokens, Arc key-file content and the
federated token are sought in every exception (message, repr, attributes, traceback, causes) and
every repr. Log records are scanned after every test of the suite by ``conftest.secret_scan``."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from mi_credential import IdentityMismatchError, ManagedIdentityCredential, ManagedIdentityError
from mi_credential import ManagedIdentitySource as S
from mi_credential.emulator import Emulator, Fault

from ._leaks import assert_no_secret
from .conftest import FakeClock, register_emulator

CANARY_HEADER = "CANARY-IDENTITY-HEADER-7f3a"
CANARY_TOKEN = "CANARY-ACCESS-TOKEN-91c2"
CANARY_JWT = "eyJhbGciOiJSUzI1NiJ9.eyJjYW5hcnkiOiI5MWMyIn0.Q0FOQVJZLXNpZ25hdHVyZQ"
SCOPE = "https://storage.azure.com/.default"


@pytest.fixture
async def canary_emulator(clock: FakeClock) -> AsyncIterator[Emulator]:
    async with Emulator(clock=clock, secret=CANARY_HEADER) as emu:
        register_emulator(emu)
        yield emu


def secrets_of(emulator: Emulator) -> list[str]:
    return [CANARY_HEADER, CANARY_TOKEN, CANARY_JWT, *emulator.secrets()]


def assert_clean(text: str, emulator: Emulator) -> None:
    for secret in secrets_of(emulator):
        assert secret not in text


async def failure(emulator: Emulator, source: S, clock: FakeClock, **kwargs) -> BaseException:
    options = {**emulator.client_options(source), **kwargs}
    credential = ManagedIdentityCredential(clock=clock, sleep=clock.sleep, **options)
    async with credential:
        with pytest.raises(ManagedIdentityError) as caught:
            await credential.get_token(SCOPE)
    return caught.value


@pytest.mark.parametrize(
    ("source", "fault"),
    [
        (S.APP_SERVICE, Fault.json_body({"access_token": CANARY_TOKEN})),
        (S.APP_SERVICE, Fault.json_body({"access_token": CANARY_TOKEN, "expires_in": -5})),
        (S.APP_SERVICE, Fault.json_body({"access_token": CANARY_TOKEN, "error": "x"}, status=500)),
        (S.APP_SERVICE, Fault.json_body(
            {"error": "bad_header", "error_description": f"got {CANARY_HEADER} and {CANARY_JWT}"},
            status=400)),
        (S.AZURE_ML, Fault.json_body({"message": f"secret {CANARY_HEADER} refused"}, status=401)),
        (S.SERVICE_FABRIC, Fault.json_body(
            {"error": {"code": "SecretHeaderNotFound", "message": f"{CANARY_HEADER}"}}, status=401)),
        (S.IMDS, Fault.raw(f'{{"access_token": "{CANARY_TOKEN}", "expi'.encode())),
        (S.CLOUD_SHELL, Fault.html(status=500, times=None)),
    ],
)
async def test_error_paths_carry_no_secret(
    canary_emulator: Emulator, clock: FakeClock, source: S, fault: Fault
) -> None:
    fault.times = None
    canary_emulator.add_fault(fault)
    error = await failure(canary_emulator, source, clock)
    assert_no_secret(error, secrets_of(canary_emulator))


async def test_wrong_identity_header_error_carries_no_secret(
    canary_emulator: Emulator, clock: FakeClock
) -> None:
    environ = {**canary_emulator.environ(S.APP_SERVICE), "IDENTITY_HEADER": "WRONG-CANARY-HDR"}
    error = await failure(canary_emulator, S.APP_SERVICE, clock, environ=environ)
    assert error.status_code == 401
    assert_no_secret(error, [*secrets_of(canary_emulator), "WRONG-CANARY-HDR"])


@pytest.mark.parametrize("echo", ["header", "key"])
async def test_arc_key_file_content_never_leaks(
    canary_emulator: Emulator, clock: FakeClock, echo: str
) -> None:
    # The challenge succeeds; the authorised leg is refused with a body echoing the key.
    canary_emulator.add_fault(
        Fault(
            source="azure_arc",
            status=403,
            skip=1,
            body=lambda r: {
                "error": "denied",
                "error_description": r.header("authorization")
                if echo == "header"
                else r.header("authorization").split()[-1],
            },
        )
    )
    error = await failure(canary_emulator, S.AZURE_ARC, clock)
    assert error.status_code == 403
    _, second = canary_emulator.requests
    key = second.header("authorization").removeprefix("Basic ")
    assert key in canary_emulator.secrets()  # a key was issued and sent...
    assert_no_secret(error, secrets_of(canary_emulator))  # ...and appears nowhere


@pytest.mark.parametrize("source", [S.IMDS, S.APP_SERVICE, S.WORKLOAD_IDENTITY])
async def test_another_identity_s_token_never_leaks(
    canary_emulator: Emulator, clock: FakeClock, source: S
) -> None:
    canary_emulator.add_fault(Fault.other_identity(times=None))
    uami = canary_emulator.user_identities[0]
    kwargs = {} if source is S.WORKLOAD_IDENTITY else {"client_id": uami.client_id}
    error = await failure(canary_emulator, source, clock, **kwargs)
    assert isinstance(error, IdentityMismatchError)
    assert canary_emulator.issued_tokens  # a token came, and appears nowhere
    assert_no_secret(error, secrets_of(canary_emulator))


async def test_federated_token_never_leaks(canary_emulator: Emulator, clock: FakeClock) -> None:
    with open(canary_emulator.token_file) as handle:
        assertion = handle.read()
    canary_emulator.add_fault(Fault.json_body(
        {"error": "invalid_client", "error_description": f"assertion {assertion} rejected"},
        status=401, source="workload_identity"))
    error = await failure(canary_emulator, S.WORKLOAD_IDENTITY, clock)
    assert_no_secret(error, [*secrets_of(canary_emulator), assertion])


async def test_token_reprs_hide_the_token(canary_emulator: Emulator, clock: FakeClock) -> None:
    async with ManagedIdentityCredential(
        environ=canary_emulator.environ(S.APP_SERVICE), clock=clock
    ) as credential:
        token = await credential.get_token(SCOPE)
        info = await credential.get_token_info(SCOPE)
        for text in (repr(token), str(token), repr(info), str(info), repr(credential)):
            assert_clean(text, canary_emulator)
        assert repr(token) == f"AccessToken(token='****', expires_on={token.expires_on})"
        assert token.token in canary_emulator.issued_tokens  # the value itself is intact
