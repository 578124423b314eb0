"""The token cache: entries, refresh windows, single-flight acquisition, and a store seam.

No transport and no OpenTelemetry: tokens come from the ``fetch`` function a caller passes, and
the counts telemetry reports are plain integers (:class:`CacheStats`). Fresh (before
``refresh_on``): the cached token. Advisory (past it, valid beyond the mandatory margin): the
cached token, and one background refresh, retried no sooner than ``REFRESH_RETRY_BACKOFF``
after a failure. Mandatory (expired or nearly): every caller waits for the one acquisition in
flight. A cancelled caller never cancels the acquisition the others share; a caller's
``claims`` bypass the cache once, and the second level too: ``fetch`` is told whether the token
it gets may be shared beyond this cache (``_store``).
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import weakref
from collections.abc import Awaitable, Callable, Coroutine
from functools import partial
from typing import Any

from azure.core.credentials import AccessToken, AccessTokenInfo

from ._constants import MANDATORY_REFRESH_MARGIN, REFRESH_RETRY_BACKOFF
from ._errors import ManagedIdentityError
from ._models import ParsedToken, RedactedAccessToken, RedactedAccessTokenInfo
from ._sources import Target

_logger = logging.getLogger("mi_credential")

_live: weakref.WeakSet[TokenCache] = weakref.WeakSet()
_live_lock = threading.Lock()


def live_caches() -> list[TokenCache]:
    """Every cache in use: for the time-to-expiry gauge (on readers' threads) and after a fork."""
    with _live_lock:
        return list(_live)

Fetch = Callable[[Target, "str | None", str, str, bool], Awaitable[ParsedToken]]
"""Gets a token from beyond this cache: ``fetch(target, claims, reason, cache_result, shared)``;
``shared`` is false for a caller's claims (the token must come from the endpoint, and stay
here)."""


class CacheStats:
    """Plain counters of ``get_token``/``get_token_info`` calls, read by observable instruments
    at collection time: counting costs the hot path an integer increment, never an
    OpenTelemetry call. Shared by the credentials that record with the same attributes."""

    __slots__ = (
        "attributes", "coalesced", "hits", "miss_cancels", "miss_errors", "miss_successes", "stale"
    )

    def __init__(self, attributes: dict[str, str]) -> None:
        self.attributes = attributes
        self.hits = 0
        self.stale = 0
        # A miss is counted when its caller has its answer, by outcome: each count only grows,
        # as a counter must (one counted on arrival and moved to errors on failure would drop).
        self.miss_successes = 0
        self.miss_errors = 0
        self.miss_cancels = 0  # the caller was cancelled while it waited: neither of the two
        self.coalesced = 0


class Entry:
    """A cached token, updated in place when refreshed, so every alias sees the new token. The
    values handed out (:attr:`access_token`, :attr:`info`) are made on first use: most
    applications ask with only one of the two getters."""

    __slots__ = (
        "access_token",
        "expires_on",
        "info",
        "mandatory_at",
        "next_background_refresh",
        "refresh_on",
        "token",
        "token_type",
    )

    def __init__(self, parsed: ParsedToken) -> None:
        self.update(parsed)

    def update(self, parsed: ParsedToken) -> None:
        self.token = parsed.token
        self.token_type = parsed.token_type
        self.expires_on = parsed.expires_on
        self.refresh_on = parsed.refresh_on
        self.mandatory_at = max(parsed.refresh_on, parsed.expires_on - MANDATORY_REFRESH_MARGIN)
        self.next_background_refresh = 0.0
        self.access_token: AccessToken | None = None
        self.info: AccessTokenInfo | None = None

    def new_access_token(self) -> AccessToken:
        """:attr:`access_token`, made now (call when it is ``None``)."""
        token = self.access_token = RedactedAccessToken(self.token, self.expires_on)
        return token

    def new_info(self) -> AccessTokenInfo:
        """:attr:`info`, made now (call when it is ``None``)."""
        info = self.info = RedactedAccessTokenInfo(
            self.token, self.expires_on, token_type=self.token_type, refresh_on=self.refresh_on
        )
        return info

    def __repr__(self) -> str:
        return f"Entry(token='****', expires_on={self.expires_on}, refresh_on={self.refresh_on})"


class Flight:
    """An acquisition in flight and the futures of the callers waiting for it."""

    __slots__ = ("scope", "task", "waiters")

    def __init__(self, task: asyncio.Task[Entry]) -> None:
        self.task = task
        self.waiters: list[asyncio.Future[Entry]] = []
        self.scope: str | None = None


FlightKey = tuple[Target, "str | None"]


class TokenCache:
    """Tokens per target for one credential, and the acquisitions in flight.

    Args:
        now: Wall clock, epoch seconds.
        stats: The counters to count calls in.
    """

    __slots__ = (
        "__weakref__",
        "_closed_error",
        "_entries",
        "_hot",
        "_inflight",
        "_now",
        "_pending",
        "stats",
    )

    def __init__(
        self,
        *,
        now: Callable[[], float],
        stats: CacheStats,
    ) -> None:
        self._now = now
        self.stats = stats
        # ``_hot`` maps the scope string of a plain single-scope call to its entry for the fast
        # path; ``_entries`` is keyed by target. Both point at the same Entry objects.
        self._hot: dict[str, Entry] = {}
        self._entries: dict[Target, Entry] = {}
        # In flight, by (target, the claims sent), so a claims challenge never joins an
        # acquisition without them where claims are sent.
        self._inflight: dict[FlightKey, Flight] = {}
        # The first acquisition of a scope string, for the callers that follow (a cold start's
        # herd waits on it without repeating the first caller's validation).
        self._pending: dict[str, Flight] = {}
        self._closed_error: Callable[[], BaseException] | None = None
        with _live_lock:  # read by the time-to-expiry gauge and after a fork
            _live.add(self)

    # -- lookups --------------------------------------------------------------------------------

    def hit(self, scopes: tuple[str, ...]) -> Entry | None:
        """The fast path: the fresh entry for a single scope string, counted as a hit."""
        if len(scopes) == 1:
            try:
                entry = self._hot.get(scopes[0])
            except TypeError:  # unhashable, so not a scope: the slow path raises the ValueError
                return None
            if entry is not None and self._now() < entry.refresh_on:
                self.stats.hits += 1
                return entry
        return None

    def pending(self, scope: str) -> Flight | None:
        """The first acquisition for ``scope``, while it is in flight."""
        try:
            return self._pending.get(scope)
        except TypeError:
            return None

    async def get(
        self,
        target: Target,
        fetch: Fetch,
        *,
        claims: str | None,
        sent_claims: str | None,
        scope: str | None,
    ) -> Entry:
        """The entry for ``target``: cached, served stale while one refresh runs, or acquired.

        Args:
            target: What the token is for.
            fetch: Gets a token from the endpoint, if one is needed.
            claims: The caller's claims; a non-empty value bypasses the cache once.
            sent_claims: The claims the acquisition sends (part of the single-flight key).
            scope: The scope string, for a plain single-scope request (the fast path's key).
        """
        entry = self._entries.get(target)
        now = self._now()
        if entry is not None and not claims:
            if scope is not None:
                self._hot[scope] = entry
            if now < entry.refresh_on:
                self.stats.hits += 1
                return entry
            if now < entry.mandatory_at:
                self.stats.stale += 1
                key = (target, sent_claims)
                if now >= entry.next_background_refresh and key not in self._inflight:
                    entry.next_background_refresh = now + REFRESH_RETRY_BACKOFF
                    self._start(key, fetch, "proactive", "stale", shared=True)
                return entry

        reason = "claims" if claims else ("initial" if entry is None else "expired")
        key = (target, sent_claims)
        flight = self._inflight.get(key)
        if flight is None or flight.task.get_loop() is not asyncio.get_running_loop():
            flight = self._start(key, fetch, reason, "miss", shared=not claims)
            if entry is None and not claims and scope is not None:
                self._pending[scope] = flight
                flight.scope = scope
            entry = await self.wait(flight, coalesced=False)
        else:
            entry = await self.wait(flight, coalesced=True)
        if scope is not None:
            self._hot[scope] = entry
        return entry

    async def wait(self, flight: Flight, *, coalesced: bool) -> Entry:
        """Wait for an acquisition on a future of this caller's own: a caller that is cancelled
        cancels its future, never the acquisition the others wait for."""
        stats = self.stats
        if coalesced:
            stats.coalesced += 1
        waiter: asyncio.Future[Entry] = asyncio.get_running_loop().create_future()
        flight.waiters.append(waiter)
        try:
            entry = await waiter
        except asyncio.CancelledError:
            stats.miss_cancels += 1
            raise
        except BaseException:
            stats.miss_errors += 1
            raise
        stats.miss_successes += 1
        return entry

    def expiries(self) -> list[tuple[str, float]]:
        """``(resource, seconds to expiry)`` per cached token. Called from metric readers'
        threads too: the entries are copied in one step before they are read."""
        now = self._now()
        entries = list(self._entries.items())
        return [(target.label, entry.expires_on - now) for target, entry in entries]

    async def settle(self, timeout: float = 10.0) -> None:
        """Wait until no acquisition is in flight (background refreshes included).

        Raises:
            TimeoutError: Some are still in flight after ``timeout`` seconds.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._inflight:
            tasks = [flight.task for flight in self._inflight.values()]
            _, running = await asyncio.wait(tasks, timeout=max(0.0, deadline - loop.time()))
            if running:
                raise TimeoutError(f"{len(running)} acquisition(s) still in flight")
            await asyncio.sleep(0)  # let the finished tasks' callbacks land

    async def close(self, error: Callable[[], BaseException]) -> None:
        """Forget every token, cancel the acquisitions in flight and fail their waiters with
        ``error()``."""
        self._closed_error = error
        self._hot.clear()
        self._entries.clear()
        tasks = [f.task for f in self._inflight.values() if not f.task.done()]
        self._inflight.clear()
        self._pending.clear()
        for task in tasks:
            task.cancel()
        loop = asyncio.get_running_loop()
        current = [t for t in tasks if t.get_loop() is loop]
        if current:
            await asyncio.gather(*current, return_exceptions=True)

    def forget_flights(self) -> list[Flight]:
        """Forget the acquisitions in flight, returning them: in a forked child they are the
        parent's tasks, on a loop that never runs there. Their targets may refresh at once."""
        flights = [*self._inflight.values(), *self._pending.values()]
        for target, _claims in self._inflight:
            entry = self._entries.get(target)
            if entry is not None:
                entry.next_background_refresh = 0.0
        self._inflight.clear()
        self._pending.clear()
        return flights

    # -- acquisition ----------------------------------------------------------------------------

    def _start(
        self, key: FlightKey, fetch: Fetch, reason: str, cache_result: str, *, shared: bool
    ) -> Flight:
        task = _start_task(self._acquire(key, fetch, reason, cache_result, shared))
        flight = self._inflight[key] = Flight(task)
        task.add_done_callback(partial(self._land, key, flight, cache_result))
        return flight

    async def _acquire(
        self, key: FlightKey, fetch: Fetch, reason: str, cache_result: str, shared: bool
    ) -> Entry:
        target, claims = key
        parsed = await fetch(target, claims, reason, cache_result, shared)
        entry = self._entries.get(target)
        if entry is None:
            entry = self._entries[target] = Entry(parsed)
        else:
            entry.update(parsed)
        return entry

    def _land(
        self, key: FlightKey, flight: Flight, cache_result: str, task: asyncio.Task[Entry]
    ) -> None:
        """The acquisition ended: forget it and hand its outcome to every waiter."""
        if self._inflight.get(key) is flight:
            del self._inflight[key]
        if flight.scope is not None and self._pending.get(flight.scope) is flight:
            del self._pending[flight.scope]
        waiters, flight.waiters = flight.waiters, []
        if task.cancelled():  # by close(), or by its loop's end: cut short, not failed
            if (entry := self._entries.get(key[0])) is not None:
                entry.next_background_refresh = 0.0
            closed = self._closed_error
            for waiter in waiters:
                if not waiter.done():
                    if closed is not None:
                        waiter.set_exception(closed())
                    else:
                        waiter.cancel()
            return
        error = task.exception()  # retrieved: a failure nobody awaited is not reported lost
        if isinstance(error, ManagedIdentityError):
            self._log_failure(key[0], cache_result, error)
        for waiter in waiters:
            if not waiter.done():
                if error is not None:
                    waiter.set_exception(error)
                else:
                    waiter.set_result(task.result())

    def _log_failure(self, target: Target, cache_result: str, error: ManagedIdentityError) -> None:
        entry = self._entries.get(target)
        if cache_result == "stale" and entry is not None:
            _logger.warning(
                "Background refresh of the token for %s failed; the cached token (valid "
                "%.0f s more) is still served and the refresh is retried in %.0f s: %s",
                target.label,
                entry.expires_on - self._now(),
                REFRESH_RETRY_BACKOFF,
                error,
            )
        else:
            message = "ManagedIdentityCredential could not acquire a token for %s: %s"
            _logger.warning(message, target.label, error)


def _start_task(coroutine: Coroutine[Any, Any, Entry]) -> asyncio.Task[Entry]:
    """Start an acquisition in a task of its own. On Python 3.12+ its first step runs at once:
    the request is on the wire before the caller yields, instead of one loop iteration later
    (behind every other ready callback, such as the rest of a cold start's herd)."""
    loop = asyncio.get_running_loop()
    if sys.version_info >= (3, 12):
        return asyncio.Task(coroutine, loop=loop, eager_start=True)
    return loop.create_task(coroutine)
