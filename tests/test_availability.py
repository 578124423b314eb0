"""IMDS decides on first contact: where nothing listens or connects hang, "no managed identity
here" comes at once and is remembered for a while; a live endpoint, however slow, is waited
for; once IMDS has answered, connection failures are retried again. Real loopback sockets: a
closed port refuses, and a listening socket whose accept queue is full makes a connect hang,
which stands in for a black-holed 169.254.169.254."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from mi_credential import CredentialUnavailableError, ManagedIdentityCredential
from mi_credential import ManagedIdentitySource as S
from mi_credential.emulator import Emulator, Fault, hanging_port, refusing_port

from .conftest import FakeClock, register_emulator

SCOPE = "https://storage.azure.com/.default"


def closed_port() -> int:
    with refusing_port() as port:
        return port


def imds_at(port: int) -> dict[str, str]:
    return {"AZURE_POD_IDENTITY_AUTHORITY_HOST": f"http://127.0.0.1:{port}"}


@pytest.fixture
def black_hole() -> Iterator[int]:
    """A port where connects hang: it listens, never accepts, and its accept queue is full."""
    with hanging_port() as port:
        yield port


async def test_nothing_listening_is_unavailable_at_once_and_remembered(clock: FakeClock) -> None:
    environ = imds_at(closed_port())
    async with ManagedIdentityCredential(environ=environ, clock=clock, sleep=clock.sleep) as cred:
        with pytest.raises(CredentialUnavailableError) as first:
            await cred.get_token(SCOPE)
        assert first.value.attempts == 2  # one quick retry of a refused connection
        assert clock.sleeps == [pytest.approx(0.2, abs=0.05)]
        assert "Calls in the next 5 s fail at once" in str(first.value)
        # Within the window: the same verdict, without touching the network.
        clock.advance(4)
        with pytest.raises(CredentialUnavailableError, match="Remembered") as again:
            await cred.get_token("https://vault.azure.net/.default")
        assert again.value.attempts == 0
        assert "connection failed" in str(again.value)
        assert len(clock.sleeps) == 1
        # After it, one acquisition asks again; another verdict doubles the window.
        clock.advance(1.5)
        with pytest.raises(CredentialUnavailableError, match="Calls in the next 10 s") as later:
            await cred.get_token(SCOPE)
        assert later.value.attempts == 2


async def test_credentials_created_later_in_the_process_know_the_verdict(
    clock: FakeClock,
) -> None:
    environ = imds_at(closed_port())
    for attempts in (2, 0, 0):
        async with ManagedIdentityCredential(
            environ=environ, clock=clock, sleep=clock.sleep
        ) as credential:
            with pytest.raises(CredentialUnavailableError) as caught:
                await credential.get_token(SCOPE)
            assert caught.value.attempts == attempts


async def test_connects_that_hang_are_unavailable_after_one_short_connect_timeout(
    clock: FakeClock, black_hole: int
) -> None:
    async with ManagedIdentityCredential(
        environ=imds_at(black_hole), clock=clock, sleep=clock.sleep
    ) as credential:
        with pytest.raises(CredentialUnavailableError, match="timed out connecting") as caught:
            await credential.get_token(SCOPE)  # about a second of real time: the connect timeout
        assert caught.value.attempts == 1  # a black hole is not asked twice
        assert clock.sleeps == []
        with pytest.raises(CredentialUnavailableError, match="Remembered"):
            await credential.get_token(SCOPE)


async def test_an_endpoint_that_comes_up_later_is_found(clock: FakeClock) -> None:
    port = closed_port()
    async with ManagedIdentityCredential(
        environ=imds_at(port), clock=clock, sleep=clock.sleep
    ) as credential:
        with pytest.raises(CredentialUnavailableError):
            await credential.get_token(SCOPE)
        async with Emulator(clock=clock, port=port) as emulator:
            register_emulator(emulator)
            clock.advance(5)
            token = await credential.get_token(SCOPE)
            assert emulator.verify(token.token)


async def test_a_slow_first_answer_is_waited_for(emulator: Emulator, clock: FakeClock) -> None:
    # Slower than the first contact's connect timeout: only a failure to connect is a verdict.
    emulator.add_fault(Fault.slow(1.5))
    async with ManagedIdentityCredential(
        environ=emulator.environ(S.IMDS), clock=clock, sleep=clock.sleep
    ) as credential:
        token = await credential.get_token(SCOPE)
    assert emulator.verify(token.token)
    assert len(emulator.requests) == 1


async def test_once_imds_has_answered_connection_failures_are_retried(clock: FakeClock) -> None:
    port = closed_port()
    first = await Emulator(clock=clock, port=port).start()
    register_emulator(first)
    restarted: list[Emulator] = []

    async def sleep(seconds: float) -> None:
        await clock.sleep(seconds)
        if not restarted:  # IMDS is back after the first back-off
            restarted.append(await Emulator(clock=clock, port=port).start())
            register_emulator(restarted[0])

    try:
        async with ManagedIdentityCredential(
            environ=first.environ(S.IMDS), clock=clock, sleep=sleep
        ) as credential:
            await credential.get_token(SCOPE)
            await first.close()  # down while a new resource is asked for
            token = await credential.get_token("https://vault.azure.net/.default")
        assert restarted and restarted[0].verify(token.token)
        assert clock.sleeps and clock.sleeps[0] >= 0.6  # the IMDS back-off, not first contact's
    finally:
        await first.close()
        for emulator in restarted:
            await emulator.close()


async def test_sources_the_platform_announces_keep_their_retries(clock: FakeClock) -> None:
    environ = {
        "IDENTITY_ENDPOINT": f"http://127.0.0.1:{closed_port()}/msi/token",
        "IDENTITY_HEADER": "h",
    }
    async with ManagedIdentityCredential(environ=environ, clock=clock, sleep=clock.sleep) as cred:
        for _ in range(2):
            with pytest.raises(CredentialUnavailableError) as caught:
                await cred.get_token(SCOPE)
            assert caught.value.attempts == 4  # retried every time, nothing remembered
