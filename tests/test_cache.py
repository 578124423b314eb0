"""Cache, single-flight and stale-while-revalidate, against the emulator on a fake clock."""

from __future__ import annotations

import asyncio

import pytest

from mi_credential import CredentialUnavailableError, ManagedIdentityError, TokenRequestError
from mi_credential import ManagedIdentitySource as S
from mi_credential.emulator import Emulator, Fault

from .conftest import CredentialFactory, FakeClock

SCOPE = "https://storage.azure.com/.default"


async def test_a_thousand_cold_callers_make_one_request(
    emulator: Emulator, make_credential: CredentialFactory
) -> None:
    credential = make_credential(S.IMDS)
    coalesced_before = credential._cache.stats.coalesced
    with emulator.hold():  # keep the request in flight while everyone arrives
        callers = [asyncio.ensure_future(credential.get_token(SCOPE)) for _ in range(1000)]
        await asyncio.sleep(0)  # every caller's first step: all of them are waiting now
        await emulator.wait_for_requests(1)
    tokens = await asyncio.gather(*callers)
    assert len(emulator.requests) == 1
    assert len({t.token for t in tokens}) == 1
    assert credential._cache.stats.coalesced - coalesced_before == 999


async def test_cached_token_is_served_without_a_request(
    emulator: Emulator, make_credential: CredentialFactory, clock: FakeClock
) -> None:
    credential = make_credential(S.APP_SERVICE)
    first = await credential.get_token(SCOPE)
    clock.advance(3600)
    assert await credential.get_token(SCOPE) is first
    info = await credential.get_token_info(SCOPE)
    assert (info.token, info.expires_on) == first
    assert info.refresh_on == int(clock() - 3600) + 43200
    assert len(emulator.requests) == 1


async def test_cache_is_keyed_by_what_was_asked(
    emulator: Emulator, make_credential: CredentialFactory
) -> None:
    credential = make_credential(S.IMDS)
    a = await credential.get_token("https://storage.azure.com/.default")
    b = await credential.get_token("https://storage.azure.com")  # the same resource
    c = await credential.get_token("https://vault.azure.net/.default")
    assert a.token == b.token != c.token
    assert len(emulator.requests) == 2


async def test_stale_token_is_served_while_one_background_refresh_runs(
    emulator: Emulator, make_credential: CredentialFactory, clock: FakeClock
) -> None:
    credential = make_credential(S.APP_SERVICE)
    old = await credential.get_token(SCOPE)
    clock.advance(43200 + 1)  # past refresh_on (half of 24 h)
    with emulator.hold():  # the refresh stays in flight while the callers are served
        served = await asyncio.gather(*(credential.get_token(SCOPE) for _ in range(50)))
        assert {t.token for t in served} == {old.token}  # at once, without waiting
        await emulator.wait_for_requests(2)
    await credential._cache.settle()
    assert len(emulator.requests) == 2  # exactly one refresh
    new = await credential.get_token(SCOPE)
    assert new.token != old.token
    assert new.expires_on == int(clock()) + 86400


async def test_failed_background_refresh_keeps_serving_and_backs_off(
    emulator: Emulator, make_credential: CredentialFactory, clock: FakeClock, caplog
) -> None:
    credential = make_credential(S.APP_SERVICE)
    old = await credential.get_token(SCOPE)
    clock.advance(43200 + 1)
    emulator.add_fault(Fault.status_code(500, times=None))
    assert (await credential.get_token(SCOPE)).token == old.token
    await credential._cache.settle()
    refresh_attempts = len(emulator.requests) - 1
    assert refresh_attempts == 4  # one background refresh, its retries included
    # Within the back-off no new refresh starts, and the valid token keeps coming.
    for _ in range(5):
        assert (await credential.get_token(SCOPE)).token == old.token
    await credential._cache.settle()
    assert len(emulator.requests) - 1 == refresh_attempts
    assert "Background refresh of the token for https://storage.azure.com failed" in caplog.text
    # After the back-off, another refresh is tried; once the endpoint recovers, a new token.
    emulator.faults.clear()
    clock.advance(31)
    await credential.get_token(SCOPE)
    await credential._cache.settle()
    assert (await credential.get_token(SCOPE)).token != old.token


async def test_expired_token_with_failing_endpoint_raises_within_the_deadline(
    emulator: Emulator, make_credential: CredentialFactory, clock: FakeClock
) -> None:
    credential = make_credential(S.APP_SERVICE, timeout=30)
    await credential.get_token(SCOPE)
    clock.advance(86400 - 30)  # inside the mandatory margin: callers must wait
    emulator.add_fault(Fault.status_code(503, times=None))
    start = clock()
    with pytest.raises(TokenRequestError) as caught:
        await credential.get_token(SCOPE)
    assert caught.value.status_code == 503
    assert caught.value.attempts == 4
    assert clock() - start <= 30


async def test_failure_reaches_every_waiter(
    emulator: Emulator, make_credential: CredentialFactory
) -> None:
    emulator.add_fault(Fault.status_code(400, times=None))
    credential = make_credential(S.IMDS)
    results = await asyncio.gather(
        *(credential.get_token(SCOPE) for _ in range(20)), return_exceptions=True
    )
    assert all(isinstance(r, CredentialUnavailableError) for r in results)
    assert len(emulator.requests) == 1


async def test_cancelled_waiter_does_not_cancel_the_shared_acquisition(
    emulator: Emulator, make_credential: CredentialFactory
) -> None:
    credential = make_credential(S.IMDS)
    with emulator.hold():
        first = asyncio.ensure_future(credential.get_token(SCOPE))
        second = asyncio.ensure_future(credential.get_token(SCOPE))
        await emulator.wait_for_requests(1)
        first.cancel()
    token = await second
    assert first.cancelled()
    assert emulator.verify(token.token)
    assert len(emulator.requests) == 1


async def test_all_waiters_cancelled_acquisition_still_fills_the_cache(
    emulator: Emulator, make_credential: CredentialFactory
) -> None:
    credential = make_credential(S.IMDS)
    with emulator.hold():
        waiter = asyncio.ensure_future(credential.get_token(SCOPE))
        await emulator.wait_for_requests(1)
        waiter.cancel()
    await credential._cache.settle()
    assert waiter.cancelled()
    await credential.get_token(SCOPE)
    assert len(emulator.requests) == 1


async def test_claims_bypass_the_cache_once(
    emulator: Emulator, make_credential: CredentialFactory
) -> None:
    credential = make_credential(S.IMDS)
    first = await credential.get_token(SCOPE)
    forced = await credential.get_token(SCOPE, claims='{"access_token":{"nbf":{"essential":true}}}')
    assert forced.token != first.token
    assert (await credential.get_token(SCOPE)).token == forced.token
    info = await credential.get_token_info(SCOPE, options={"claims": "x"})
    assert info.token not in (first.token, forced.token)
    assert (await credential.get_token(SCOPE, claims="")).token == info.token
    assert len(emulator.requests) == 3
    # claims are never sent to a managed identity endpoint
    assert all(r.param("claims") is None for r in emulator.requests)


async def test_server_refresh_in_is_honoured(
    emulator: Emulator, make_credential: CredentialFactory, clock: FakeClock
) -> None:
    emulator.refresh_in = 600
    credential = make_credential(S.IMDS)
    info = await credential.get_token_info(SCOPE)
    assert info.refresh_on == int(clock()) + 600
    clock.advance(601)
    await credential.get_token(SCOPE)
    await credential._cache.settle()
    assert len(emulator.requests) == 2


@pytest.mark.parametrize("source", [S.IMDS, S.APP_SERVICE])  # expires_in; absolute expires_on
async def test_a_two_hour_token_is_refreshed_at_half_life(
    emulator: Emulator, make_credential: CredentialFactory, clock: FakeClock, source: S
) -> None:
    clock.advance(0.7)  # asked for at a fractional second, as on a real clock
    emulator.token_lifetime = 7200
    credential = make_credential(source)
    info = await credential.get_token_info(SCOPE)
    assert abs(info.refresh_on - (clock() + 3600)) <= 5


async def test_short_lived_tokens_refresh_five_minutes_before_expiry(
    emulator: Emulator, make_credential: CredentialFactory, clock: FakeClock
) -> None:
    emulator.token_lifetime = 3600
    credential = make_credential(S.IMDS)
    info = await credential.get_token_info(SCOPE)
    assert info.refresh_on == info.expires_on - 300
    clock.advance(3600 - 301)
    await credential.get_token(SCOPE)
    assert len(emulator.requests) == 1
    clock.advance(2)
    await credential.get_token(SCOPE)  # advisory: served, refreshed behind
    await credential._cache.settle()
    assert len(emulator.requests) == 2


async def test_no_caller_ever_gets_an_expired_token(
    emulator: Emulator, make_credential: CredentialFactory, clock: FakeClock
) -> None:
    emulator.token_lifetime = 600
    credential = make_credential(S.APP_SERVICE)
    for _ in range(200):
        token = await credential.get_token(SCOPE)
        assert token.expires_on - clock() > 0
        clock.advance(37)
        await asyncio.sleep(0)


async def test_invalid_scopes_are_value_errors(make_credential: CredentialFactory) -> None:
    credential = make_credential(S.IMDS)
    for scopes, message in (
        ((), "At least one scope"),
        (("https://a/.default", "https://b/.default"), "exactly one scope"),
        (("vault",), "expected a resource URI"),
        (("https://vault.azure.net",), None),
        (("api://my-app/.default",), None),
        (("00000003-0000-0000-c000-000000000000/.default",), None),
        (("",), "non-empty string"),
        ((" ",), "non-empty string"),
        (("https://a/.default https://b/.default",), "no whitespace"),
        (("https://a/\r\n.default",), "no whitespace or control characters"),
    ):
        if message is None:  # valid shapes get a token
            assert (await credential.get_token(*scopes)).token
            continue
        with pytest.raises(ValueError, match=message):
            await credential.get_token(*scopes)


async def test_a_closed_credential_fails_clearly(make_credential: CredentialFactory) -> None:
    credential = make_credential(S.IMDS)
    await credential.get_token(SCOPE)
    await credential.close()
    await credential.close()  # idempotent
    with pytest.raises(ManagedIdentityError, match="closed"):
        await credential.get_token(SCOPE)
    with pytest.raises(ManagedIdentityError, match="closed"):
        await credential.get_token_info(SCOPE)
    with pytest.raises(ManagedIdentityError, match="closed"):
        async with credential:
            pass


async def test_close_while_acquiring(emulator: Emulator, make_credential: CredentialFactory) -> None:
    credential = make_credential(S.IMDS)
    emulator.hold()  # released when the emulator closes
    waiter = asyncio.ensure_future(credential.get_token(SCOPE))
    await emulator.wait_for_requests(1)
    await credential.close()
    with pytest.raises(ManagedIdentityError, match="closed"):
        await waiter
