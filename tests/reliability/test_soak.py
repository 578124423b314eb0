"""Soak: 200,000 calls over a hundred token lifetimes on a fake clock, with one refresh in ten
meeting a failure first. Memory stays flat, every refresh cycle costs exactly one successful upstream
request, and no caller is ever handed an expired token."""

from __future__ import annotations

import asyncio
import logging
import random
import tracemalloc

import pytest

from mi_credential import ManagedIdentityCredential
from mi_credential import ManagedIdentitySource as S
from mi_credential.emulator import Emulator, Fault

from ..conftest import FakeClock

pytestmark = pytest.mark.reliability

SCOPE = "https://storage.azure.com/.default"
CALLS = 200_000
LIFETIME = 600  # refreshed from 300 s on (half the lifetime, capped at five minutes before)
STEP = 0.3  # fake seconds per call: 200,000 calls span 60,000 s, a hundred lifetimes
FAULT_RATE = 0.10


async def test_soak(
    emulator: Emulator, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    # Captured DEBUG records would hold on to their arguments and read as growth.
    caplog.set_level(logging.INFO, logger="mi_credential")
    emulator.token_lifetime = LIFETIME
    rng = random.Random(20261126)
    credential = ManagedIdentityCredential(environ=emulator.environ(S.APP_SERVICE), clock=clock,
                                           sleep=clock.sleep)
    seen: set[str] = set()
    faults = 0
    expired_handed_out = 0
    tracemalloc.start()
    core = [tracemalloc.Filter(True, "*/mi_credential/_*")]
    async with credential:
        await credential.get_token(SCOPE)  # warm up: first token, session, code paths
        baseline = tracemalloc.take_snapshot().filter_traces(core)
        last_token = None
        for _ in range(CALLS):
            token = await credential.get_token(SCOPE)
            if token.expires_on <= clock():
                expired_handed_out += 1
            if token.token != last_token:
                last_token = token.token
                seen.add(token.token)
                # The next refresh's first answer fails one time in ten.
                if rng.random() < FAULT_RATE:
                    emulator.add_fault(Fault.status_code(503, times=1))
                    faults += 1
            clock.advance(STEP)
            await asyncio.sleep(0)  # callers do I/O between calls: refreshes make progress
        final = tracemalloc.take_snapshot().filter_traces(core)
    tracemalloc.stop()

    growth = sum(stat.size_diff for stat in final.compare_to(baseline, "lineno"))
    unused = sum(f.times or 0 for f in emulator.faults)  # injected after the last refresh
    span = CALLS * STEP
    cycles = emulator.issued
    print(
        f"\nsoak: {CALLS} calls over {span:.0f} s ({span / LIFETIME:.0f} lifetimes), "
        f"{cycles} refresh cycles, {len(emulator.requests)} upstream requests "
        f"({faults - unused} failed), core memory growth {growth} bytes"
    )
    assert expired_handed_out == 0
    assert cycles == len(seen)  # each successful upstream answer was a refresh callers used
    assert len(emulator.requests) - (faults - unused) == cycles  # one success per cycle
    assert span / LIFETIME <= cycles <= span / (LIFETIME / 2) + 2
    assert faults >= 3  # the faults really happened
    assert growth < 16 * 1024
