"""The request log and what tests wait on: events, never sleeps.

Every token request is recorded when it arrives, gets its status when its endpoint has answered,
and counts as responded once the response is written to the connection. Waiters are woken by
those steps themselves, and a gate can hold responses until a test lets them go.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace
from types import TracebackType
from typing import TypeVar

from .._models import ManagedIdentitySource
from ._faults import RecordedRequest

#: Seconds :meth:`RequestLog.wait` waits by default (real time) before it gives up.
DEFAULT_WAIT = 5.0

#: How many token requests, issued tokens and Azure Arc keys an emulator keeps by default.
DEFAULT_HISTORY = 10_000

#: How many of the requests received a timeout's message lists (the latest).
_LISTED = 20

T = TypeVar("T")


class Ring(list[T]):
    """A list that keeps its latest ``size`` items (``None``: all of them) as :meth:`append`
    adds more, the oldest going first; ``dropped`` counts those let go since the last
    :meth:`clear`. Otherwise a plain list: it compares, copies and unpacks like one."""

    def __init__(self, size: int | None) -> None:
        if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 1):
            raise ValueError("history must be a positive number of entries, or None.")
        super().__init__()
        self.size = size
        self.dropped = 0

    def append(self, item: T, /) -> None:
        super().append(item)
        if self.size is not None and len(self) > self.size:
            excess = len(self) - self.size
            del self[:excess]
            self.dropped += excess

    def clear(self) -> None:
        super().clear()
        self.dropped = 0


class Gate:
    """Holds token responses while closed: a request is recorded, then waits here until the gate
    opens. Closed by :meth:`Emulator.hold`, opened by :meth:`Emulator.release` or on leaving a
    ``with emulator.hold():`` block."""

    def __init__(self) -> None:
        self._open = asyncio.Event()
        self._open.set()
        self.held = 0
        """How many requests are waiting at the gate now."""

    def close(self) -> Gate:
        """Hold the requests that come from now on; returns the gate (a context manager that
        opens it on leaving)."""
        self._open.clear()
        return self

    def open(self) -> None:
        self._open.set()

    async def pass_through(self) -> None:
        """Return at once while the gate is open; else when it opens."""
        if self._open.is_set():
            return
        self.held += 1
        try:
            await self._open.wait()
        finally:
            self.held -= 1

    def __enter__(self) -> Gate:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.open()


class RequestLog:
    """The token requests an emulator received, in arrival order, and waits on them.

    ``entries`` is a list that tests read and may clear, holding the latest ``history`` requests
    (a :class:`Ring`); every count is taken over what it holds when a waiter is checked, so
    clearing it starts the counts again."""

    def __init__(self, gate: Gate, history: int | None = DEFAULT_HISTORY) -> None:
        self.entries: Ring[RecordedRequest] = Ring(history)
        self._gate = gate
        self._writing: list[RecordedRequest] = []
        self._waiters: list[tuple[Callable[[], bool], asyncio.Future[None]]] = []

    def add(self, record: RecordedRequest) -> None:
        """A request arrived."""
        self.entries.append(record)
        self._wake()

    def answer(self, record: RecordedRequest, status: int) -> RecordedRequest:
        """Its endpoint answered ``status`` (the response is about to be written): the log's
        entry gets the status. Returns the updated entry, to pass to :meth:`written`."""
        answered = replace(record, status=status)
        entries = self.entries
        for index in range(len(entries) - 1, -1, -1):  # nearly always the last few
            if entries[index] is record:
                entries[index] = answered
                break
        self._writing.append(answered)
        return answered

    def written(self, record: RecordedRequest) -> None:
        """The response to ``record`` (as :meth:`answer` returned it) is on the connection, or
        the connection is gone."""
        self._writing = [r for r in self._writing if r is not record]
        self._wake()

    def matching(self, source: str | None) -> list[RecordedRequest]:
        return [r for r in self.entries if source is None or r.source == source]

    def responded(self, source: str | None) -> list[RecordedRequest]:
        """The entries whose response has been written."""
        return [
            r
            for r in self.matching(source)
            if r.status is not None and not any(r is w for w in self._writing)
        ]

    async def wait(
        self,
        count: int,
        *,
        source: ManagedIdentitySource | str | None,
        responded: bool,
        timeout: float,
    ) -> list[RecordedRequest]:
        """Wait until ``count`` entries of ``source`` (``None``: any) have arrived, or have been
        responded to; return them all. Raises :class:`TimeoutError` after ``timeout`` seconds."""
        name = None if source is None else ManagedIdentitySource(source).value
        select = self.responded if responded else self.matching
        if len(select(name)) < count:
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            waiter = (lambda: len(select(name)) >= count, future)
            self._waiters.append(waiter)
            try:
                await asyncio.wait_for(future, timeout)
            except asyncio.TimeoutError:
                raise TimeoutError(
                    self._timed_out(count, source=name, responded=responded, timeout=timeout)
                ) from None
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
        return select(name)

    def _wake(self) -> None:
        if not self._waiters:
            return
        waiting = []
        for condition, future in self._waiters:
            if future.done():
                continue
            if condition():
                future.set_result(None)
            else:
                waiting.append((condition, future))
        self._waiters = waiting

    def _timed_out(self, count: int, *, source: str | None, responded: bool, timeout: float) -> str:
        what = "response" if responded else "token request"
        plural = "" if count == 1 else "s"
        scope = "" if source is None else f" of {source}"
        seen = self.matching(source)
        lines = [
            f"Waited {timeout:g} s for {count} {what}{plural}{scope}; the emulator has received "
            f"{len(seen)} token requests and written {len(self.responded(source))} responses."
        ]
        if self.entries.dropped:
            lines.append(
                f"  (the log keeps the latest {self.entries.size}: "
                f"{self.entries.dropped} older requests were let go)"
            )
        if len(seen) > _LISTED:
            lines.append(f"  ... {len(seen) - _LISTED} earlier requests, then:")
        lines += [
            f"  {r.source}: {r.method} {r.path} -> "
            + ("not answered yet" if r.status is None else str(r.status))
            for r in seen[-_LISTED:]
        ]
        if self._gate.held:
            lines.append(f"{self._gate.held} held at the gate: release() lets them through.")
        return "\n".join(lines)
