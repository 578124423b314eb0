"""The token cache's second level: a store shared beyond one process, and going through it.

The in-process cache (``_cache``) stays the first level; its hit path never touches a store. On a
miss or a refresh, the acquisition goes :func:`through` the store: a token another process
stored is used while it is good; otherwise one process at a time holds the store's lock for the
target and asks the endpoint, and the others wait for what it writes (bounded), then read it. A
refresher that dies releases its lock with its process; one that hangs is waited for no longer
than the bound, after which the waiter asks the endpoint itself: nobody is left without a token
because another process failed.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import NamedTuple, Protocol

from ._constants import MANDATORY_REFRESH_MARGIN
from ._models import ParsedToken
from ._sources import Target
from .telemetry import ORIGIN_ENDPOINT as ENDPOINT
from .telemetry import ORIGIN_SHARED_CACHE as SHARED_CACHE
from .telemetry import ORIGIN_SHARED_REFRESH as SHARED_REFRESH

_logger = logging.getLogger("mi_credential")

__all__ = ["ENDPOINT", "SHARED_CACHE", "SHARED_REFRESH", "Shared", "TokenStore", "through"]

#: Seconds between tries of a held lock: the first, and the longest.
LOCK_POLL_FIRST = 0.002
LOCK_POLL_MAX = 0.02


class TokenStore(Protocol):
    """A second cache level, shared beyond one process (such as a per-user file store).

    Only tokens obtained without a caller's claims are read from or written to it. Every method
    is quick and never raises for the store's own failures: a store that cannot be read has no
    token, one that cannot be written keeps none.
    """

    def read(self, target: Target) -> ParsedToken | None:
        """The stored token for ``target``, if any still valid (it may be past its refresh
        time)."""
        ...

    def write(self, target: Target, token: ParsedToken) -> None:
        """Store a token just obtained from the endpoint."""
        ...

    def try_lock(self, target: Target) -> bool:
        """Become the one refresher of ``target`` if nobody is; never waits."""
        ...

    def unlock(self, target: Target) -> None:
        """Stop being its refresher."""
        ...

    @property
    def directory(self) -> str:
        """Where the tokens are kept, for messages."""
        ...


class Shared(NamedTuple):
    """A token obtained through a store: where it came from, and whether the lock was waited
    for."""

    token: ParsedToken
    origin: str
    waited: bool


async def through(
    store: TokenStore,
    target: Target,
    fetch: Callable[[], Awaitable[ParsedToken]],
    *,
    now: Callable[[], float],
    monotonic: Callable[[], float],
    sleep: Callable[[float], Awaitable[object]],
    bound: float,
    stale_ok: bool,
) -> Shared:
    """A token for ``target`` through ``store``: the stored one while good, else the refresher's.

    Args:
        store: The shared level.
        target: What the token is for.
        fetch: Asks the endpoint (called by the refresher only).
        now: Wall clock, epoch seconds (token times).
        monotonic: The clock the bound is measured with.
        sleep: Waits between tries of a held lock.
        bound: Seconds to wait for another process's refresh before asking the endpoint
            (the credential gives half its deadline).
        stale_ok: A stored token past its refresh time but still valid beyond the mandatory
            margin will do (a miss: served stale, as the in-process cache does). A background
            refresh wants a fresh one.

    Raises:
        ManagedIdentityError: As ``fetch``, when this process had to ask the endpoint.
    """
    stored = store.read(target)
    if stored is not None and _good(stored, now(), stale_ok):
        return Shared(stored, SHARED_CACHE, False)
    deadline = monotonic() + bound
    delay = LOCK_POLL_FIRST
    waited = False
    while not store.try_lock(target):
        waited = True
        if monotonic() >= deadline:
            _logger.warning(
                "Another process has been refreshing the shared token for %s for over %.0f s; "
                "this one asks the endpoint itself",
                target.label,
                bound,
            )
            parsed = await fetch()
            store.write(target, parsed)
            return Shared(parsed, ENDPOINT, True)
        await sleep(delay)
        delay = min(delay * 2, LOCK_POLL_MAX)
        stored = store.read(target)
        if stored is not None and _good(stored, now(), False):
            return Shared(stored, SHARED_REFRESH, True)
    try:
        stored = store.read(target)  # the previous holder may have refreshed it
        if stored is not None and _good(stored, now(), False):
            return Shared(stored, SHARED_REFRESH if waited else SHARED_CACHE, waited)
        parsed = await fetch()
        store.write(target, parsed)
        return Shared(parsed, ENDPOINT, waited)
    finally:
        store.unlock(target)


def _good(token: ParsedToken, now: float, stale_ok: bool) -> bool:
    if now < token.refresh_on:
        return True
    return stale_ok and now < max(token.refresh_on, token.expires_on - MANDATORY_REFRESH_MARGIN)
