"""The shared token cache across real processes: each worker (``tests/_shared_cache_worker.py``)
has its own credential and shares one directory of real files; the emulator counts the
requests. The workers' clock is the test's (sent with each command), so refresh windows are
reached without waiting for them."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import filelock
import pytest

from mi_credential.emulator import Emulator

from .conftest import FakeClock

ROOT = Path(__file__).parents[1]
SCOPE = "https://vault.azure.net/.default"
RESPONSE_BOUND = 60.0  # seconds any worker may take to answer a command before the test fails

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")


class Worker:
    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.pid = process.pid

    async def send(self, **command: Any) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write((json.dumps(command) + "\n").encode())
        await self.process.stdin.drain()

    async def receive(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = await asyncio.wait_for(self.process.stdout.readline(), RESPONSE_BOUND)
        assert line, f"worker {self.pid} exited"
        answer: dict[str, Any] = json.loads(line)
        return answer

    async def get(self, now: float) -> dict[str, Any]:
        await self.send(op="get", scope=SCOPE, now=now)
        return await self.receive()

    async def settle(self) -> None:
        await self.send(op="settle")
        assert await self.receive() == {"settled": True}

    async def stop(self) -> None:
        if self.process.returncode is None:
            if self.process.stdin is not None:
                self.process.stdin.close()
            try:
                await asyncio.wait_for(self.process.wait(), 10)
            except asyncio.TimeoutError:
                self.process.kill()
                await self.process.wait()


Spawn = Callable[..., "asyncio.Future[list[Worker]]"]


@pytest.fixture
async def spawn(emulator: Emulator, tmp_path: Path) -> AsyncIterator[Any]:
    """Start workers sharing ``tmp_path/cache``; each is ready (imported, credential made) when
    returned. Stopped after the test."""
    started: list[Worker] = []

    async def start(count: int, **options: Any) -> list[Worker]:
        options = {
            "environ": emulator.environ("imds"),
            "shared_cache": str(tmp_path / "cache"),
            "fake_clock": True,
            **options,
        }
        processes = [
            await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "tests._shared_cache_worker",
                json.dumps(options),
                cwd=ROOT,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
            )
            for _ in range(count)
        ]
        workers = [Worker(process) for process in processes]
        started.extend(workers)
        for worker in workers:
            assert await worker.receive() == {"ready": worker.pid}
        return workers

    yield start
    await asyncio.gather(*(worker.stop() for worker in started))


def imds_requests(emulator: Emulator) -> int:
    return len(emulator.requests_for("imds"))


async def test_processes_started_together_make_one_request_and_later_ones_none(
    spawn: Any, emulator: Emulator, clock: FakeClock
) -> None:
    workers = await spawn(8)
    answers = await asyncio.gather(*(worker.get(clock()) for worker in workers))
    assert {answer["token"] for answer in answers} == {answers[0]["token"]}
    assert imds_requests(emulator) == 1

    later = await spawn(8)
    answers += await asyncio.gather(*(worker.get(clock()) for worker in later))
    assert {answer["token"] for answer in answers} == {answers[0]["token"]}
    assert imds_requests(emulator) == 1


async def test_without_the_shared_cache_every_process_asks(
    spawn: Any, emulator: Emulator, clock: FakeClock
) -> None:
    """The control: what the tests here count is what the shared cache saves."""
    workers = await spawn(4, shared_cache=False)
    await asyncio.gather(*(worker.get(clock()) for worker in workers))
    assert imds_requests(emulator) == 4


async def test_each_refresh_cycle_makes_one_request_and_no_expired_token_is_served(
    spawn: Any, emulator: Emulator, clock: FakeClock
) -> None:
    emulator.token_lifetime = 3600  # refresh 300 s before expiry, mandatory in the last 60 s
    workers = await spawn(8)
    answers = await asyncio.gather(*(worker.get(clock()) for worker in workers))
    expires_on, token = answers[0]["expires_on"], answers[0]["token"]
    for cycle in range(5):
        # Odd cycles reach the advisory window (the stale token is served while one process
        # refreshes in the background), even ones the mandatory window (everyone waits).
        clock.now = expires_on - (200 if cycle % 2 == 0 else 30)
        answers = await asyncio.gather(*(worker.get(clock()) for worker in workers))
        await asyncio.gather(*(worker.settle() for worker in workers))
        answers += await asyncio.gather(*(worker.get(clock()) for worker in workers))
        for answer in answers:
            assert "error" not in answer, answer
            assert answer["expires_on"] > answer["now"], "an expired token was handed out"
        assert imds_requests(emulator) == 2 + cycle
        (fresh,) = {answer["token"] for answer in answers[8:]}  # all on the new token
        (new_expiry,) = {answer["expires_on"] for answer in answers[8:]}
        assert fresh != token and new_expiry > expires_on
        expires_on, token = new_expiry, fresh


async def test_a_refresher_killed_holding_the_lock_is_taken_over(
    spawn: Any, emulator: Emulator, clock: FakeClock
) -> None:
    refresher, *others = await spawn(3)
    with emulator.hold():
        await refresher.send(op="get", scope=SCOPE, now=clock())
        await emulator.wait_for_requests(1)  # it holds the lock, and its request is on the wire
        for worker in others:
            await worker.send(op="get", scope=SCOPE, now=clock())
        os.kill(refresher.pid, signal.SIGKILL)
        await refresher.process.wait()
        # The kernel released its lock: one of the others refreshes.
        await emulator.wait_for_requests(2)
    answers = [await worker.receive() for worker in others]
    assert all("token" in answer for answer in answers), answers
    assert answers[0]["token"] == answers[1]["token"]
    assert imds_requests(emulator) == 2


async def test_a_lock_held_past_the_bound_is_not_waited_for(
    spawn: Any, emulator: Emulator, clock: FakeClock, tmp_path: Path
) -> None:
    """A holder that hangs (here, this test process) is waited for no longer than the
    worker's deadline; the worker then asks the endpoint itself."""
    clock.now = time.time()  # these workers run on the real clock
    (first,) = await spawn(1, fake_clock=False)
    assert "token" in await first.get(emulator.clock())
    (entry,) = (tmp_path / "cache").glob("*.json")
    entry.unlink()  # no token to read: the next worker must refresh
    lock = filelock.FileLock(str(entry.with_suffix(".lock")), thread_local=False)
    with lock.acquire(timeout=0):
        (second,) = await spawn(1, fake_clock=False, timeout=3)  # waits 1.5 s for the holder
        answer = await second.get(emulator.clock())
    assert "token" in answer, answer
    assert imds_requests(emulator) == 2
