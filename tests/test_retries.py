"""Retries and deadlines through the emulator's fault injection, on a fake clock."""

from __future__ import annotations

import socket

import pytest

from mi_credential import (
    CredentialUnavailableError,
    InvalidTokenResponseError,
    ManagedIdentityCredential,
    TokenRequestError,
)
from mi_credential import ManagedIdentitySource as S
from mi_credential.emulator import Emulator, Fault

from .conftest import CredentialFactory, FakeClock

SCOPE = "https://management.azure.com/.default"


async def test_imds_410_backs_off_slower_until_imds_is_back(
    emulator: Emulator, make_credential: CredentialFactory, clock: FakeClock
) -> None:
    emulator.add_fault(Fault.status_code(410, times=5))
    credential = make_credential(S.IMDS)
    token = await credential.get_token(SCOPE)
    assert emulator.verify(token.token)
    assert len(emulator.requests) == 6
    assert 2.0 <= clock.sleeps[0] <= 3.0  # 2.5 s base for 410 (0.8 s otherwise), 20 % jitter


async def test_imds_410_forever_gives_up_after_70_seconds_within_the_deadline(
    emulator: Emulator, make_credential: CredentialFactory, clock: FakeClock
) -> None:
    emulator.add_fault(Fault.status_code(410, times=None))
    credential = make_credential(S.IMDS)
    start = clock()
    with pytest.raises(TokenRequestError) as caught:
        await credential.get_token(SCOPE)
    assert 70 <= clock() - start <= 90, clock.sleeps
    assert caught.value.status_code == 410
    assert caught.value.attempts == len(emulator.requests)


async def test_retry_after_is_obeyed(
    emulator: Emulator, make_credential: CredentialFactory, clock: FakeClock
) -> None:
    emulator.add_fault(Fault.status_code(429, retry_after=7, times=2))
    credential = make_credential(S.APP_SERVICE)
    await credential.get_token(SCOPE)
    assert clock.sleeps == [7.0, 7.0]


async def test_retry_after_beyond_the_deadline_fails_at_once(
    emulator: Emulator, make_credential: CredentialFactory, clock: FakeClock
) -> None:
    emulator.add_fault(Fault.status_code(429, retry_after=3600, times=None))
    credential = make_credential(S.APP_SERVICE, timeout=60)
    with pytest.raises(TokenRequestError) as caught:
        await credential.get_token(SCOPE)
    assert clock.sleeps == []
    assert caught.value.status_code == 429
    assert "throttling" in str(caught.value)


async def test_429_without_retry_after_backs_off_exponentially(
    emulator: Emulator, make_credential: CredentialFactory, clock: FakeClock
) -> None:
    emulator.add_fault(Fault.status_code(429, times=None))
    credential = make_credential(S.IMDS)
    with pytest.raises(TokenRequestError):
        await credential.get_token(SCOPE)
    assert len(clock.sleeps) == 5
    assert all(later > earlier for earlier, later in zip(clock.sleeps, clock.sleeps[1:], strict=False))
    assert 0.64 <= clock.sleeps[0] <= 0.96


async def test_burst_of_5xx_then_success(
    emulator: Emulator, make_credential: CredentialFactory
) -> None:
    emulator.add_fault(Fault.status_code(500, times=1))
    emulator.add_fault(Fault.status_code(502, times=1))
    emulator.add_fault(Fault.status_code(503, times=1))
    credential = make_credential(S.AZURE_ML)
    token = await credential.get_token(SCOPE)
    assert emulator.verify(token.token)
    assert [r.status for r in emulator.requests] == [500, 502, 503, 200]


@pytest.mark.parametrize("status", [400, 401, 403, 404, 501])
async def test_non_retryable_statuses_fail_at_once(
    emulator: Emulator, make_credential: CredentialFactory, status: int
) -> None:
    emulator.add_fault(Fault.status_code(status, times=None))
    credential = make_credential(S.APP_SERVICE)
    with pytest.raises(TokenRequestError) as caught:
        await credential.get_token(SCOPE)
    assert caught.value.status_code == status
    assert caught.value.attempts == 1
    assert len(emulator.requests) == 1


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.mark.parametrize("source", [S.IMDS, S.APP_SERVICE])
async def test_connection_refused_is_unavailable(
    clock: FakeClock, source: S
) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    environ = (
        {"AZURE_POD_IDENTITY_AUTHORITY_HOST": url}
        if source is S.IMDS
        else {"IDENTITY_ENDPOINT": url + "/msi/token", "IDENTITY_HEADER": "x"}
    )
    async with ManagedIdentityCredential(environ=environ, clock=clock, sleep=clock.sleep) as cred:
        with pytest.raises(CredentialUnavailableError) as caught:
            await cred.get_token(SCOPE)
    error = caught.value
    assert "did not answer (connection failed" in str(error)
    if source is S.IMDS:  # never answered this process: a verdict after one quick retry
        assert error.attempts == 2
        assert len(clock.sleeps) == 1 and clock.sleeps[0] <= 0.25
        assert "Calls in the next 5 s fail at once" in str(error)
    else:
        assert error.attempts == 4
        assert len(clock.sleeps) == 3


async def test_dropped_connection_is_retried(
    emulator: Emulator, make_credential: CredentialFactory
) -> None:
    emulator.add_fault(Fault.drop(times=2))
    credential = make_credential(S.IMDS)
    assert emulator.verify((await credential.get_token(SCOPE)).token)
    assert len(emulator.requests) == 3


async def test_connection_reset_mid_body_is_retried(
    emulator: Emulator, make_credential: CredentialFactory
) -> None:
    emulator.add_fault(Fault.reset(times=1))
    credential = make_credential(S.APP_SERVICE)
    assert emulator.verify((await credential.get_token(SCOPE)).token)
    assert len(emulator.requests) == 2


async def test_slow_headers_hit_the_read_timeout_then_retry(
    emulator: Emulator, make_credential: CredentialFactory
) -> None:
    emulator.add_fault(Fault.slow(0.5, times=1))
    credential = make_credential(S.APP_SERVICE, read_timeout=0.1)
    assert emulator.verify((await credential.get_token(SCOPE)).token)
    assert len(emulator.requests) == 2


async def test_an_endpoint_that_never_answers_fails_within_the_deadline(
    emulator: Emulator,
) -> None:
    # Real time here: the deadline must hold without a fake clock.
    emulator.add_fault(Fault.hang(times=None))
    credential = ManagedIdentityCredential(
        environ=emulator.environ(S.APP_SERVICE), timeout=0.5, read_timeout=10
    )
    async with credential:
        with pytest.raises(CredentialUnavailableError, match="timed out"):
            await credential.get_token(SCOPE)


@pytest.mark.parametrize(
    ("fault", "why"),
    [
        (Fault.html(), "not a JSON object"),
        (Fault.raw(b'{"access_token": "abc", "expires_in": "36'), "not a JSON object"),
        (Fault.raw(b"x" * (2 * 1024 * 1024)), "larger than any token response"),
        (Fault.json_body({"access_token": "canary-no-expiry"}), "no usable expires_in"),
        (Fault.json_body({"access_token": "canary", "expires_in": 0}), "already expired"),
        (Fault.json_body({"access_token": "canary", "expires_on": "yesterday"}), "no usable"),
    ],
)
async def test_unusable_success_responses(
    emulator: Emulator, make_credential: CredentialFactory, fault: Fault, why: str
) -> None:
    emulator.add_fault(fault)
    credential = make_credential(S.APP_SERVICE)
    with pytest.raises(InvalidTokenResponseError, match=why) as caught:
        await credential.get_token(SCOPE)
    assert "canary" not in str(caught.value)
    assert caught.value.attempts == 1


async def test_redirects_are_not_followed(
    emulator: Emulator, make_credential: CredentialFactory
) -> None:
    emulator.add_fault(
        Fault(status=307, headers={"Location": "http://127.0.0.2:1/steal"}, body=b"")
    )
    credential = make_credential(S.APP_SERVICE)
    with pytest.raises(TokenRequestError) as caught:
        await credential.get_token(SCOPE)
    assert caught.value.status_code == 307


async def test_service_fabric_wrong_thumbprint_is_refused_before_sending(
    emulator: Emulator, make_credential: CredentialFactory
) -> None:
    environ = {**emulator.environ(S.SERVICE_FABRIC), "IDENTITY_SERVER_THUMBPRINT": "0" * 40}
    credential = make_credential(S.SERVICE_FABRIC, environ=environ)
    with pytest.raises(CredentialUnavailableError, match="does not match IDENTITY_SERVER_THUMBPRINT"):
        await credential.get_token(SCOPE)
    assert emulator.requests == []  # the secret never left
