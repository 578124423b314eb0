"""A credential outlives its event loop and its process: used from one loop after another, and
in a child forked after it was used (gunicorn ``--preload``, multiprocessing's fork start method).

The emulator serves from a thread with a loop of its own, so it keeps answering while the test's
loops come and go, and while a forked child asks it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import gc
import io
import json
import logging
import os
import select
import signal
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

import pytest

from mi_credential import ManagedIdentityCredential, _transport
from mi_credential import ManagedIdentitySource as S
from mi_credential.emulator import Emulator
from tests.conftest import FakeClock, register_emulator

T = TypeVar("T")

SCOPE = "https://management.azure.com/.default"
OTHER = "https://vault.azure.net/.default"
NEW = "https://storage.azure.com/.default"

WAIT = 20.0  # seconds before a test gives up on something that should have happened at once


class LoopThread:
    """An event loop running in a thread of its own until the block ends (then shut down as
    ``asyncio.run`` does)."""

    def __init__(self) -> None:
        self._ready = threading.Event()
        self._thread = threading.Thread(target=asyncio.run, args=(self._main(),), daemon=True)
        self.loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None

    async def _main(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._ready.set()
        await self._stop.wait()

    def __enter__(self) -> LoopThread:
        self._thread.start()
        assert self._ready.wait(WAIT)
        return self

    def __exit__(self, *exc_info: object) -> None:
        assert self.loop is not None and self._stop is not None
        self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(WAIT)
        assert not self._thread.is_alive()

    def submit(self, coroutine: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop)

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return self.submit(coroutine).result(WAIT)

    def call(self, function: Callable[[], object]) -> None:
        async def call() -> None:
            function()

        self.run(call())


class Served:
    def __init__(self, server: LoopThread, emulator: Emulator) -> None:
        self.server = server
        self.emulator = emulator

    def wait_for_requests(self, count: int) -> None:
        self.server.run(self.emulator.wait_for_requests(count))

    async def requests_arrived(self, count: int) -> None:
        """From another loop: wait until ``count`` token requests reached the emulator."""
        await asyncio.wrap_future(self.server.submit(self.emulator.wait_for_requests(count)))


@pytest.fixture
def served(clock: FakeClock) -> Iterator[Served]:
    with LoopThread() as server:
        emulator = server.run(Emulator(clock=clock).start())
        register_emulator(emulator)
        try:
            yield Served(server, emulator)
        finally:
            server.run(emulator.close())


@contextlib.contextmanager
def nothing_reported() -> Iterator[list[str]]:
    """Collect every warning and every error a finalizer raised in the block (and in the
    garbage collection that ends it)."""
    reported: list[str] = []
    previous_hook = sys.unraisablehook

    def unraisable(report: Any) -> None:
        reported.append(f"{report.err_msg or 'unraisable'}: {report.exc_value!r}")

    sys.unraisablehook = unraisable
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield reported
            gc.collect()
        reported.extend(f"{w.category.__name__}: {w.message}" for w in caught)
    finally:
        sys.unraisablehook = previous_hook


def credential_for(served: Served, clock: FakeClock | None, source: S) -> ManagedIdentityCredential:
    kwargs: dict[str, Any] = served.emulator.client_options(source)
    if clock is not None:
        kwargs.update(clock=clock, sleep=clock.sleep)
    return ManagedIdentityCredential(**kwargs)


# -- one loop after another ---------------------------------------------------------------------


def test_two_event_loops_in_a_row(served: Served, clock: FakeClock) -> None:
    credential = credential_for(served, clock, S.APP_SERVICE)

    async def second() -> str:
        try:
            return (await credential.get_token(OTHER)).token
        finally:
            await credential.close()

    with nothing_reported() as reported:
        first = asyncio.run(credential.get_token(SCOPE)).token
        other = asyncio.run(second())
    assert reported == []
    assert served.emulator.verify(first, audience="https://management.azure.com")
    assert served.emulator.verify(other, audience="https://vault.azure.net")
    # Each loop's session was closed when its loop shut down, and forgotten.
    assert dict(_transport._loop_sessions) == {}


def test_loops_in_two_threads_one_after_another(served: Served, clock: FakeClock) -> None:
    credential = credential_for(served, clock, S.IMDS)
    with nothing_reported() as reported:
        with LoopThread() as first:
            token = first.run(credential.get_token(SCOPE)).token
        with LoopThread() as second:
            assert second.run(credential.get_token(SCOPE)).token == token  # the cached token
            second.run(credential.get_token(OTHER))
            second.run(credential.close())
    assert reported == []
    assert len(served.emulator.requests) == 2
    assert dict(_transport._loop_sessions) == {}


def test_a_background_refresh_cut_short_by_its_loop_end(served: Served, clock: FakeClock) -> None:
    emulator = served.emulator
    credential = credential_for(served, clock, S.IMDS)

    async def first() -> str:
        old = (await credential.get_token(SCOPE)).token
        clock.advance(43201)  # past the refresh time, far from expiry
        served.server.call(emulator.hold)
        assert (await credential.get_token(SCOPE)).token == old  # the refresh starts behind
        await served.requests_arrived(2)
        return old  # the loop ends with the refresh on the wire: asyncio.run cancels it

    async def second(old: str) -> str:
        try:
            assert (await credential.get_token(SCOPE)).token == old  # still served...
            await credential._cache.settle()  # ...while a refresh of this loop runs at once
            return (await credential.get_token(SCOPE)).token
        finally:
            await credential.close()

    with nothing_reported() as reported:
        old = asyncio.run(first())
        served.server.call(emulator.release)
        fresh = asyncio.run(second(old))
    assert reported == []
    assert fresh != old and fresh == emulator.issued_tokens[-1]
    assert len(emulator.requests) == 3


# -- a forked child -----------------------------------------------------------------------------


def in_child(work: Callable[[], dict[str, Any]]) -> tuple[int, int]:
    """Fork; the child runs ``work`` and writes its result, what it wrote to stderr and what
    was reported in it (warnings, finalizer errors, log records at WARNING and above) as JSON to
    a pipe. Returns the child's pid and the read end of the pipe."""
    read_end, write_end = os.pipe()
    with warnings.catch_warnings():
        # Python 3.12+ warns about forking a process with threads (the emulator's, the loop's
        # below); the child only ever uses its one thread.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid:
        os.close(write_end)
        return pid, read_end
    try:  # the child: never returns into pytest
        os.close(read_end)
        result: dict[str, Any] = {}
        with tempfile.TemporaryFile() as err:
            os.dup2(err.fileno(), 2)
            sys.stderr = io.TextIOWrapper(os.fdopen(os.dup(2), "wb"), line_buffering=True)
            handler = logging.StreamHandler(sys.stderr)
            handler.setLevel(logging.WARNING)
            logging.getLogger().addHandler(handler)
            try:
                with nothing_reported() as reported:
                    result = work()
            except BaseException as exc:
                result = {"error": repr(exc)}
            sys.stderr.flush()
            err.seek(0)
            result.update(stderr=err.read().decode(errors="replace"), reported=reported)
        os.write(write_end, json.dumps(result).encode())
    finally:
        os._exit(0)


def child_result(pid: int, read_end: int) -> dict[str, Any]:
    chunks: list[bytes] = []
    try:
        while True:
            ready, _, _ = select.select([read_end], [], [], WAIT)
            if not ready:
                os.kill(pid, signal.SIGKILL)
                pytest.fail("the child did not finish")
            chunk = os.read(read_end, 65536)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(read_end)
        os.waitpid(pid, 0)
    return dict(json.loads(b"".join(chunks)))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is not available on this platform")
def test_a_credential_used_before_fork_works_in_the_child(served: Served) -> None:
    emulator = served.emulator
    credential = credential_for(served, None, S.APP_SERVICE)
    first = asyncio.run(credential.get_token(SCOPE)).token

    def child() -> dict[str, Any]:
        async def main() -> dict[str, Any]:
            cached = (await credential.get_token(SCOPE)).token
            other = (await credential.get_token(OTHER)).token  # in flight in the parent
            new = (await credential.get_token(NEW)).token
            await credential.close()
            return {"cached": cached, "other": other, "new": new}

        return asyncio.run(asyncio.wait_for(main(), WAIT))

    # At the fork, a loop of the parent's is running, with the credential's session open on it
    # and an acquisition in flight (held by the emulator): a process forking from a thread
    # while it serves.
    with LoopThread() as parent:
        served.server.call(emulator.hold)
        in_flight = parent.submit(credential.get_token(OTHER))
        served.wait_for_requests(2)
        pid, read_end = in_child(child)
        try:
            served.wait_for_requests(3)  # the child's own request for OTHER
        finally:
            served.server.call(emulator.release)
        report = child_result(pid, read_end)
        assert report.get("error") is None
        assert report["stderr"] == ""
        assert report["reported"] == []
        assert report["cached"] == first  # the parent's cached token is still good in the child
        assert emulator.verify(report["other"], audience="https://vault.azure.net")
        assert emulator.verify(report["new"], audience="https://storage.azure.com")
        # The parent is untouched: its acquisition lands, and the credential goes on working.
        parent_other = in_flight.result(WAIT).token
        assert parent_other != report["other"]
        assert parent.run(credential.get_token(NEW)).token != report["new"]
        parent.run(credential.close())
    assert len(emulator.requests) == 5


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is not available on this platform")
def test_a_shared_cache_lock_held_at_fork_stays_the_parents(tmp_path: Any) -> None:
    """A child forked while this process holds a shared-cache lock (its refresh in flight, as
    when a gunicorn master forks workers) does not hold it too: the child is refused while the
    parent holds it, its exit does not release it, and once the parent lets go it can be taken.
    (filelock before 3.30 hands the child the parent's lock; later ones refuse the child the
    parent's lock objects, which the store then makes anew.)"""
    pytest.importorskip("filelock", reason="the shared-cache extra is not installed")
    from mi_credential._shared_cache import FileTokenStore, prepare_directory
    from mi_credential._sources._base import Target

    directory = str(tmp_path / "shared")
    prepare_directory(directory)
    target = Target("https://management.azure.com")
    store = FileTokenStore(directory, b"fork-test", time.time)
    elsewhere = FileTokenStore(directory, b"fork-test", time.time)  # another process's view
    assert store.try_lock(target)

    def child() -> dict[str, Any]:
        refused = not store.try_lock(target)
        store.unlock(target)  # what the child's copy of the refresh would do, were it to run
        elsewhere_refused = not elsewhere.try_lock(target)
        gc.collect()
        return {"refused": refused, "elsewhere_refused": elsewhere_refused}

    report = child_result(*in_child(child))
    assert report.get("error") is None
    assert report["reported"] == []
    assert report["refused"] is True and report["elsewhere_refused"] is True
    assert not elsewhere.try_lock(target)  # still the parent's, after the child exited
    store.unlock(target)
    assert elsewhere.try_lock(target)
    elsewhere.unlock(target)

    # A child forked while nothing is held takes a lock of its own (the others are refused),
    # which ends with it.
    def second_child() -> dict[str, Any]:
        took = store.try_lock(target)
        return {"took": took, "exclusive": not elsewhere.try_lock(target)}

    report = child_result(*in_child(second_child))
    assert report.get("error") is None
    assert report["reported"] == []
    assert report["took"] is True and report["exclusive"] is True
    assert store.try_lock(target)
    store.unlock(target)
