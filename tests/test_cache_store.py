"""The cache's second level, through its store seam: caches that share a store make one request
per refresh between them. Offline: tokens come from a counting ``fetch`` on a fake clock, and
the store is a dict with one lock, as a cross-process store is a file with one."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from functools import partial

import pytest

from mi_credential import TokenRequestError
from mi_credential._cache import CacheStats, TokenCache
from mi_credential._models import ParsedToken
from mi_credential._sources import Target
from mi_credential._store import through

from .conftest import FakeClock

TARGET = Target("https://storage.azure.com")
SCOPE = "https://storage.azure.com/.default"
BOUND = 90.0


class DictStore:
    """A shared store: a dict of tokens and one refresher at a time."""

    directory = "memory"

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.tokens: dict[Target, ParsedToken] = {}
        self.holder: Target | None = None
        self.reads = 0
        self.writes = 0
        self.lock_tries = 0

    def read(self, target: Target) -> ParsedToken | None:
        self.reads += 1
        token = self.tokens.get(target)
        return token if token is not None and self.clock() < token.expires_on else None

    def write(self, target: Target, token: ParsedToken) -> None:
        self.writes += 1
        self.tokens[target] = token

    def try_lock(self, target: Target) -> bool:
        self.lock_tries += 1
        if self.holder is not None:
            return False
        self.holder = target
        return True

    def unlock(self, target: Target) -> None:
        assert self.holder == target
        self.holder = None


class Endpoint:
    """Counts fetches; can hold them on an event or fail the next ones."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.calls: list[tuple[Target, str | None, str, str]] = []
        self.origins: list[str] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.failures = 0

    async def fetch(
        self, target: Target, claims: str | None, reason: str, cache_result: str
    ) -> ParsedToken:
        self.calls.append((target, claims, reason, cache_result))
        await asyncio.sleep(0)  # a request is never answered within the step that sends it
        await self.gate.wait()
        if self.failures:
            self.failures -= 1
            raise TokenRequestError("the endpoint failed")
        now = int(self.clock())
        return ParsedToken(f"token-{len(self.calls)}", now + 3600, now + 3300)


@pytest.fixture
def endpoint(clock: FakeClock) -> Endpoint:
    return Endpoint(clock)


async def until(condition: Callable[[], bool]) -> None:
    """Let the loop run until ``condition`` holds (a bounded number of iterations, no time)."""
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("the condition never held")


class Shared:
    """One cache over a shared store: its ``fetch`` goes through the store as a credential's
    acquisition does, and records where each token came from."""

    def __init__(self, clock: FakeClock, store: DictStore, endpoint: Endpoint) -> None:
        self.clock = clock
        self.store = store
        self.endpoint = endpoint
        self.cache = TokenCache(now=clock, stats=CacheStats({}))
        self.origins: list[str] = []

    async def fetch(
        self, target: Target, claims: str | None, reason: str, cache_result: str, shared: bool
    ) -> ParsedToken:
        if not shared:
            self.origins.append("claims")
            return await self.endpoint.fetch(target, claims, reason, cache_result)
        result = await through(
            self.store,
            target,
            partial(self.endpoint.fetch, target, claims, reason, cache_result),
            now=self.clock,
            monotonic=self.clock,
            sleep=self.clock.sleep,
            bound=BOUND,
            stale_ok=cache_result == "miss",
        )
        self.origins.append(result.origin)
        return result.token

    async def get(self, claims: str | None = None) -> str:
        entry = await self.cache.get(
            TARGET, self.fetch, claims=claims, sent_claims=None, scope=SCOPE
        )
        return entry.token


def new_cache(clock: FakeClock, store: DictStore, endpoint: Endpoint) -> Shared:
    return Shared(clock, store, endpoint)


async def test_a_cache_uses_the_token_another_cache_stored(
    clock: FakeClock, endpoint: Endpoint
) -> None:
    store = DictStore(clock)
    first, second = new_cache(clock, store, endpoint), new_cache(clock, store, endpoint)
    assert await first.get() == "token-1"
    assert await second.get() == "token-1"
    assert len(endpoint.calls) == 1 and store.writes == 1
    assert (first.origins, second.origins) == (["endpoint"], ["shared_cache"])


async def test_concurrent_misses_elect_one_refresher(clock: FakeClock, endpoint: Endpoint) -> None:
    store = DictStore(clock)
    caches = [new_cache(clock, store, endpoint) for _ in range(5)]
    endpoint.gate.clear()
    waiting = [asyncio.ensure_future(cache.get()) for cache in caches]
    # The refresher holds the lock and asks the endpoint; the others try the lock in vain.
    await until(lambda: len(endpoint.calls) == 1 and store.lock_tries >= 5 + 4)
    tries = store.lock_tries
    await until(lambda: store.lock_tries >= tries + 8)  # still waiting, still off the endpoint
    assert len(endpoint.calls) == 1
    endpoint.gate.set()
    assert await asyncio.gather(*waiting) == ["token-1"] * 5
    assert len(endpoint.calls) == 1 and store.writes == 1
    origins = sorted(origin for cache in caches for origin in cache.origins)
    assert origins == ["endpoint"] + ["shared_refresh"] * 4
    assert store.holder is None


async def test_the_hit_path_does_not_touch_the_store(clock: FakeClock, endpoint: Endpoint) -> None:
    store = DictStore(clock)
    shared = new_cache(clock, store, endpoint)
    await shared.get()
    reads = store.reads
    for _ in range(10):
        assert shared.cache.hit((SCOPE,)) is not None
        await shared.get()  # the slow path's in-process lookup, fresh entry
    assert store.reads == reads


async def test_a_stored_token_past_its_refresh_time_is_refreshed_once(
    clock: FakeClock, endpoint: Endpoint
) -> None:
    store = DictStore(clock)
    first, second = new_cache(clock, store, endpoint), new_cache(clock, store, endpoint)
    await first.get()
    clock.advance(3301)  # past refresh_on, still valid: the first cache serves it stale
    assert await first.get() == "token-1"
    await first.cache.settle()  # its background refresh went through the store
    assert len(endpoint.calls) == 2 and endpoint.calls[1][3] == "stale"
    assert await second.get() == "token-2"  # the refreshed token, from the store
    assert len(endpoint.calls) == 2


async def test_a_miss_serves_a_stored_token_past_its_refresh_time_while_it_is_valid(
    clock: FakeClock, endpoint: Endpoint
) -> None:
    store = DictStore(clock)
    first, second = new_cache(clock, store, endpoint), new_cache(clock, store, endpoint)
    await first.get()
    clock.advance(3301)  # stale-while-revalidate holds across processes too
    assert await second.get() == "token-1"
    assert len(endpoint.calls) == 1 and second.origins == ["shared_cache"]
    assert await second.get() == "token-1"  # stale in-process now: one background refresh
    await second.cache.settle()
    assert len(endpoint.calls) == 2 and endpoint.calls[1][3] == "stale"
    # Served stale, and its refresh finds the new one stored. From Python 3.12 the refresh's
    # first step runs at once (an eager task), so a token found in the store is in the entry
    # before the call returns it.
    assert await first.get() == ("token-2" if sys.version_info >= (3, 12) else "token-1")
    await first.cache.settle()
    assert await first.get() == "token-2"
    assert len(endpoint.calls) == 2 and first.origins[-1] == "shared_cache"


async def test_a_stored_token_near_expiry_is_not_served(
    clock: FakeClock, endpoint: Endpoint
) -> None:
    store = DictStore(clock)
    first, second = new_cache(clock, store, endpoint), new_cache(clock, store, endpoint)
    await first.get()
    clock.advance(3600 - 30)  # inside the mandatory margin: the second waits for a new token
    assert await second.get() == "token-2"
    assert second.origins == ["endpoint"]


async def test_tokens_obtained_with_claims_are_never_shared(
    clock: FakeClock, endpoint: Endpoint
) -> None:
    store = DictStore(clock)
    first, second = new_cache(clock, store, endpoint), new_cache(clock, store, endpoint)
    await first.get()
    reads, writes = store.reads, store.writes
    assert await first.get(claims='{"a":1}') == "token-2"  # bypasses both levels
    assert (store.reads, store.writes) == (reads, writes)
    assert await second.get() == "token-1"  # the shared entry is untouched


async def test_when_the_refresher_fails_the_next_holder_asks_the_endpoint(
    clock: FakeClock, endpoint: Endpoint
) -> None:
    store = DictStore(clock)
    first, second = new_cache(clock, store, endpoint), new_cache(clock, store, endpoint)
    endpoint.gate.clear()
    endpoint.failures = 1
    failing = asyncio.ensure_future(first.get())
    await until(lambda: len(endpoint.calls) == 1)
    waiting = asyncio.ensure_future(second.get())
    await until(lambda: store.lock_tries >= 3)  # the second waits for the refresher now
    endpoint.gate.set()
    with pytest.raises(TokenRequestError):
        await failing
    assert await waiting == "token-2"  # nobody is left without a token by another's failure
    assert len(endpoint.calls) == 2 and store.writes == 1
    assert second.origins == ["endpoint"] and store.holder is None


async def test_a_refresher_that_never_finishes_is_waited_for_no_longer_than_the_bound(
    clock: FakeClock, endpoint: Endpoint, caplog: pytest.LogCaptureFixture
) -> None:
    store = DictStore(clock)
    store.holder = TARGET  # a process that took the lock and hangs
    shared = new_cache(clock, store, endpoint)
    start = clock()
    assert await shared.get() == "token-1"
    assert BOUND <= clock() - start < BOUND + 1  # polled, on the injected clock, then gave up
    assert shared.origins == ["endpoint"] and store.writes == 1
    assert max(clock.sleeps) <= 0.02  # a released lock is noticed within 20 ms
    assert "asks the endpoint itself" in caplog.text
    assert store.holder == TARGET  # the hung holder's lock is not ours to release
