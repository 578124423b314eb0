"""The cache's second level, through its store seam: caches that share a store make one request
per refresh between them. Offline: tokens come from a counting ``fetch`` on a fake clock, and
the store is a dict with one lock, as a cross-process store is a file with one."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import pytest

from mi_credential import TokenRequestError
from mi_credential._cache import CacheStats, TokenCache
from mi_credential._models import ParsedToken
from mi_credential._sources import Target

from .conftest import FakeClock

TARGET = Target("https://storage.azure.com")
SCOPE = "https://storage.azure.com/.default"


class DictStore:
    """A shared store: a dict of tokens and one refresher at a time."""

    def __init__(self) -> None:
        self.tokens: dict[Target, ParsedToken] = {}
        self.lock = asyncio.Lock()
        self.reads = 0
        self.writes = 0

    async def read(self, target: Target) -> ParsedToken | None:
        self.reads += 1
        return self.tokens.get(target)

    async def write(self, target: Target, token: ParsedToken) -> None:
        self.writes += 1
        self.tokens[target] = token

    @contextlib.asynccontextmanager
    async def refresher(self, target: Target) -> AsyncIterator[None]:
        async with self.lock:
            yield


class Endpoint:
    """Counts fetches; can hold them on an event or fail the next ones."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.calls: list[tuple[Target, str | None, str, str]] = []
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


def new_cache(clock: FakeClock, store: DictStore | None) -> TokenCache:
    return TokenCache(now=clock, stats=CacheStats({}), store=store)


async def get(cache: TokenCache, endpoint: Endpoint, claims: str | None = None) -> str:
    entry = await cache.get(TARGET, endpoint.fetch, claims=claims, sent_claims=None, scope=SCOPE)
    return entry.token


async def test_a_cache_uses_the_token_another_cache_stored(
    clock: FakeClock, endpoint: Endpoint
) -> None:
    store = DictStore()
    first, second = new_cache(clock, store), new_cache(clock, store)
    assert await get(first, endpoint) == "token-1"
    assert await get(second, endpoint) == "token-1"
    assert len(endpoint.calls) == 1 and store.writes == 1


async def test_concurrent_misses_elect_one_refresher(clock: FakeClock, endpoint: Endpoint) -> None:
    store = DictStore()
    caches = [new_cache(clock, store) for _ in range(5)]
    endpoint.gate.clear()
    waiting = [asyncio.ensure_future(get(cache, endpoint)) for cache in caches]
    # Each reads the store; the refresher reads again under the lock, then asks the endpoint.
    await until(lambda: store.reads == 6 and len(endpoint.calls) == 1)
    for _ in range(20):  # however long the refresher takes, the others stay off the endpoint
        await asyncio.sleep(0)
    assert len(endpoint.calls) == 1  # the others wait for the refresher, not the endpoint
    endpoint.gate.set()
    assert await asyncio.gather(*waiting) == ["token-1"] * 5
    assert len(endpoint.calls) == 1 and store.writes == 1


async def test_the_hit_path_does_not_touch_the_store(clock: FakeClock, endpoint: Endpoint) -> None:
    store = DictStore()
    cache = new_cache(clock, store)
    await get(cache, endpoint)
    reads = store.reads
    for _ in range(10):
        assert cache.hit((SCOPE,)) is not None
        await get(cache, endpoint)  # the slow path's in-process lookup, fresh entry
    assert store.reads == reads


async def test_a_stored_token_past_its_refresh_time_is_refreshed_once(
    clock: FakeClock, endpoint: Endpoint
) -> None:
    store = DictStore()
    first, second = new_cache(clock, store), new_cache(clock, store)
    await get(first, endpoint)
    clock.advance(3301)  # past refresh_on, still valid: the first cache serves it stale
    assert await get(first, endpoint) == "token-1"
    await first.settle()  # its background refresh went through the store
    assert len(endpoint.calls) == 2 and endpoint.calls[1][3] == "stale"
    assert await get(second, endpoint) == "token-2"  # the refreshed token, from the store
    assert len(endpoint.calls) == 2


async def test_tokens_obtained_with_claims_are_never_shared(
    clock: FakeClock, endpoint: Endpoint
) -> None:
    store = DictStore()
    first, second = new_cache(clock, store), new_cache(clock, store)
    await get(first, endpoint)
    reads, writes = store.reads, store.writes
    assert await get(first, endpoint, claims='{"a":1}') == "token-2"  # bypasses both levels
    assert (store.reads, store.writes) == (reads, writes)
    assert await get(second, endpoint) == "token-1"  # the shared entry is untouched


async def test_when_the_refresher_fails_the_next_holder_asks_the_endpoint(
    clock: FakeClock, endpoint: Endpoint
) -> None:
    store = DictStore()
    first, second = new_cache(clock, store), new_cache(clock, store)
    endpoint.gate.clear()
    endpoint.failures = 1
    failing = asyncio.ensure_future(get(first, endpoint))
    await until(lambda: len(endpoint.calls) == 1)
    waiting = asyncio.ensure_future(get(second, endpoint))
    await until(lambda: store.reads == 3)  # the second waits for the refresher now
    endpoint.gate.set()
    with pytest.raises(TokenRequestError):
        await failing
    assert await waiting == "token-2"  # nobody is left without a token by another's failure
    assert len(endpoint.calls) == 2 and store.writes == 1
