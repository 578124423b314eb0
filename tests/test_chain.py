"""With azure-identity's ChainedTokenCredential: an unavailable managed identity hands over to
the next credential, as azure-identity's own ManagedIdentityCredential does."""

from __future__ import annotations

import pytest
from azure.core.credentials import AccessToken
from azure.core.exceptions import ClientAuthenticationError
from azure.identity import CredentialUnavailableError as AzureIdentityUnavailable
from azure.identity.aio import ChainedTokenCredential

from mi_credential import (
    CredentialUnavailableError,
    ManagedIdentityCredential,
    ManagedIdentityError,
    TokenRequestError,
)
from mi_credential import ManagedIdentitySource as S
from mi_credential.emulator import Emulator, Fault

from .conftest import FakeClock

SCOPE = "https://vault.azure.net/.default"


class Fallback:
    """The next credential in a chain (a developer's CLI login, say)."""

    def __init__(self) -> None:
        self.calls = 0

    async def get_token(self, *scopes: str, **kwargs: object) -> AccessToken:
        self.calls += 1
        return AccessToken("fallback-token", 2_000_000_000)

    async def close(self) -> None:
        pass

    async def __aenter__(self) -> Fallback:
        return self

    async def __aexit__(self, *args: object) -> None:
        pass


async def test_unavailable_hands_over_to_the_next_credential(
    emulator: Emulator, clock: FakeClock
) -> None:
    fallback = Fallback()
    managed = ManagedIdentityCredential(
        environ=emulator.environ(S.IMDS), client_id="not-assigned", clock=clock,
        sleep=clock.sleep,
    )
    async with ChainedTokenCredential(managed, fallback) as chain:  # type: ignore[arg-type]
        token = await chain.get_token(SCOPE)
    assert token.token == "fallback-token"
    assert fallback.calls == 1
    await managed.close()


async def test_docker_desktops_unreachable_network_hands_over(
    emulator: Emulator, clock: FakeClock
) -> None:
    body = b"dial tcp 169.254.169.254:80: A socket operation was attempted to an unreachable network."
    emulator.add_fault(Fault.raw(body, status=403, content_type="text/plain", times=None))
    fallback = Fallback()
    managed = ManagedIdentityCredential(
        environ=emulator.environ(S.IMDS), clock=clock, sleep=clock.sleep
    )
    async with ChainedTokenCredential(managed, fallback) as chain:  # type: ignore[arg-type]
        token = await chain.get_token(SCOPE)
    assert token.token == "fallback-token"
    assert len(emulator.requests) == 1  # a refusal is not retried
    await managed.close()


async def test_the_error_is_both_ours_and_azure_identitys(
    emulator: Emulator, clock: FakeClock
) -> None:
    async with ManagedIdentityCredential(
        environ=emulator.environ(S.IMDS), client_id="not-assigned", clock=clock
    ) as managed:
        with pytest.raises(CredentialUnavailableError) as caught:
            await managed.get_token(SCOPE)
    error = caught.value
    assert isinstance(error, AzureIdentityUnavailable)
    assert isinstance(error, ManagedIdentityError)
    assert type(error).__name__ == "CredentialUnavailableError"
    assert error.status_code == 400 and error.source is S.IMDS


async def test_other_failures_still_stop_the_chain(emulator: Emulator, clock: FakeClock) -> None:
    emulator.add_fault(Fault.status_code(500, times=None))
    fallback = Fallback()
    managed = ManagedIdentityCredential(
        environ=emulator.environ(S.APP_SERVICE), clock=clock, sleep=clock.sleep
    )
    async with ChainedTokenCredential(managed, fallback) as chain:  # type: ignore[arg-type]
        with pytest.raises(ClientAuthenticationError, match="answered HTTP 500") as caught:
            await chain.get_token(SCOPE)  # the chain stops at a real failure and reports ours
    assert not isinstance(caught.value, TokenRequestError)  # the chain's own error
    assert fallback.calls == 0
    await managed.close()
