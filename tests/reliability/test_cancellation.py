"""Cancellation at every await point, and close() with work in flight: nothing is left pending,
no session is left open, the shared acquisition survives its waiters."""

from __future__ import annotations

import asyncio

import pytest

import mi_credential._transport as transport
from mi_credential import ManagedIdentityCredential, ManagedIdentityError
from mi_credential import ManagedIdentitySource as S
from mi_credential.emulator import Emulator, Fault

from ..conftest import FakeClock

pytestmark = pytest.mark.reliability

SCOPE = "https://storage.azure.com/.default"


def other_tasks() -> set[asyncio.Task[object]]:
    """Tasks left besides this test's own and the emulator's request handlers (server side)."""
    return {
        t
        for t in asyncio.all_tasks()
        if t is not asyncio.current_task()
        and not getattr(t.get_coro(), "__qualname__", "").startswith("RequestHandler.")
    }


async def settle() -> None:
    """Let finished tasks' callbacks run."""
    for _ in range(5):
        await asyncio.sleep(0)


def credential_for(emulator: Emulator, clock: FakeClock, source: S) -> ManagedIdentityCredential:
    return ManagedIdentityCredential(
        **emulator.client_options(source), clock=clock, sleep=clock.sleep
    )


@pytest.mark.parametrize("source", [S.IMDS, S.AZURE_ARC, S.SERVICE_FABRIC, S.WORKLOAD_IDENTITY])
async def test_a_caller_cancelled_at_every_await_point(
    emulator: Emulator, clock: FakeClock, source: S
) -> None:
    # One retry on the way, so that the retry sleep is among the await points too.
    steps = 0
    while True:
        emulator.requests.clear()
        emulator.faults.clear()
        emulator.add_fault(Fault.status_code(503, source=source.value, times=1))
        credential = credential_for(emulator, clock, source)
        caller = asyncio.ensure_future(credential.get_token(SCOPE))
        for _ in range(steps):
            await asyncio.sleep(0)
        finished_before_cancel = caller.done()
        caller.cancel()
        try:
            await caller
            cancelled = False
        except asyncio.CancelledError:
            cancelled = True
        # The acquisition goes on for everyone else; a new caller gets its token.
        token = await credential.get_token(SCOPE)
        assert emulator.verify(token.token)
        assert emulator.issued == 1, "the shared acquisition was not restarted"
        await credential.close()
        await settle()
        assert other_tasks() == set()
        emulator.issued_tokens.clear()
        if finished_before_cancel and not cancelled:
            break  # every await point before completion was tried
        steps += 1
    assert steps > 5


async def test_close_while_acquisitions_are_in_flight(emulator: Emulator, clock: FakeClock) -> None:
    credential = credential_for(emulator, clock, S.APP_SERVICE)
    emulator.hold()  # released when the emulator closes
    waiters = [
        asyncio.ensure_future(credential.get_token(f"https://r{i}/.default")) for i in range(5)
    ]
    await emulator.wait_for_requests(5)
    await credential.close()
    results = await asyncio.gather(*waiters, return_exceptions=True)
    assert all(isinstance(r, ManagedIdentityError) and "closed" in str(r) for r in results)
    await settle()
    assert other_tasks() == set()
    shared = transport._loop_sessions.get(asyncio.get_running_loop())
    assert shared is None or shared.session is None


async def test_close_during_a_background_refresh(emulator: Emulator, clock: FakeClock) -> None:
    credential = credential_for(emulator, clock, S.IMDS)
    old = await credential.get_token(SCOPE)
    clock.advance(43201)
    emulator.hold()  # released when the emulator closes
    assert (await credential.get_token(SCOPE)).token == old.token  # refresh starts behind
    await emulator.wait_for_requests(2)
    assert other_tasks()  # the background refresh is running
    await credential.close()
    await settle()
    assert other_tasks() == set()


async def test_close_during_retry_backoff(emulator: Emulator) -> None:
    emulator.add_fault(Fault.status_code(503, times=None))
    backing_off = asyncio.Event()

    async def sleep(seconds: float) -> None:
        backing_off.set()
        await asyncio.sleep(seconds)  # a real back-off of about a second, cut short by close()

    credential = ManagedIdentityCredential(environ=emulator.environ(S.AZURE_ML), sleep=sleep)
    waiter = asyncio.ensure_future(credential.get_token(SCOPE))
    await asyncio.wait_for(backing_off.wait(), 5)
    await credential.close()
    with pytest.raises(ManagedIdentityError, match="closed"):
        await waiter
    await settle()
    assert other_tasks() == set()


async def test_many_waiters_cancelled_together(emulator: Emulator, clock: FakeClock) -> None:
    credential = credential_for(emulator, clock, S.IMDS)
    with emulator.hold():
        waiters = [asyncio.ensure_future(credential.get_token(SCOPE)) for _ in range(100)]
        await asyncio.sleep(0)  # every waiter's first step: all of them are waiting now
        await emulator.wait_for_requests(1)
        for waiter in waiters[:99]:
            waiter.cancel()
    token = await waiters[99]
    assert emulator.verify(token.token)
    assert sum(w.cancelled() for w in waiters) == 99
    assert len(emulator.requests) == 1
    await credential.close()
    await settle()
    assert other_tasks() == set()
