"""mi_credential against azure.identity.aio.ManagedIdentityCredential, side by side in one run.

Both libraries talk to the same loopback endpoint (``_fake_endpoint``, another process, 5 ms of
artificial latency), in IMDS and App Service modes, with the OpenTelemetry SDK off and then on
(tracing and metrics to in-memory exporters; for the reference, azure-core's native tracing is
enabled too). Contenders alternate within each measurement so that machine noise hits both.

    python -m benchmarks.bench_credential            # full run
    python -m benchmarks.bench_credential --quick    # smoke run
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import os
import statistics
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from functools import partial
from typing import Any

import aiohttp

from mi_credential import ManagedIdentityCredential
from mi_credential._constants import EnvironmentVariables

from ._fake_endpoint import SECRET, running
from ._harness import Row, interleaved, main

SCOPE = "https://storage.azure.com/.default"
LATENCY = 0.005
REF = "azure-identity"


def _reference() -> Any:
    from azure.identity.aio import ManagedIdentityCredential as Reference

    return Reference()


def _ours() -> ManagedIdentityCredential:
    return ManagedIdentityCredential()


def _use_environment(environ: dict[str, str]) -> None:
    for name in EnvironmentVariables.ALL:
        os.environ.pop(name, None)
    os.environ.update(environ)


def _install_sdk() -> Callable[[], None]:
    """Set global SDK providers with in-memory exporters; returns a function that clears them."""
    from azure.core.settings import settings
    from opentelemetry import metrics, trace
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(tracer_provider)
    reader = InMemoryMetricReader()
    metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
    settings.tracing_enabled = True

    def clear() -> None:
        exporter.clear()
        reader.get_metrics_data()

    return clear


async def _cache_hits(mode: str, sdk: str, quick: bool) -> list[Row]:
    ours, reference = _ours(), _reference()
    try:
        await ours.get_token(SCOPE)
        await reference.get_token(SCOPE)
        batch, batches = (300, 5) if quick else (3000, 21)
        rows = []
        for method in ("get_token", "get_token_info"):
            calls: dict[str, Callable[[], Awaitable[Any]]] = {
                "ours": partial(getattr(ours, method), SCOPE),
                "ref": partial(getattr(reference, method), SCOPE),
            }
            times = await interleaved(
                calls,
                batch=batch,
                batches=batches,
            )
            rows.append(
                Row(
                    f"cache hit, {mode}, SDK {sdk}",
                    f"{method} per call",
                    times["ours"],
                    times["ref"],
                    "s",
                    target="<= 0.15" if method == "get_token" and sdk == "on" else "",
                )
            )
        return rows
    finally:
        await ours.close()
        await reference.close()


async def _cold(
    mode: str, sdk: str, url: str, headers: dict[str, str], quick: bool
) -> tuple[list[Row], float, float]:
    """Two kinds of cold: a cache miss on a long-lived credential (what an application pays for
    each new resource or refresh: compared with a GET on a live session), and the very first
    token of a new credential (compared with a GET on a new session)."""

    async def ours_first() -> None:
        async with _ours() as credential:
            await credential.get_token(SCOPE)

    async def reference_first() -> None:
        async with _reference() as credential:
            await credential.get_token(SCOPE)

    async def bare_new() -> None:
        async with aiohttp.ClientSession() as fresh, fresh.get(url, headers=headers) as response:
            await response.read()

    rounds = 8 if quick else 60
    live = await _live_misses(url, headers, rounds)
    first = await _alternate({"ours": ours_first, "ref": reference_first, "bare": bare_new}, rounds)
    group = f"cold acquisition, {mode}, SDK {sdk}"
    rows = [
        Row(group, "cache miss on a live credential", live["ours"], live["ref"], "s"),
        *_miss_rows(group, live, target="<= 1.05"),
        Row(group, "first token of a new credential", first["ours"], first["ref"], "s"),
        Row(
            group,
            "ours: first token vs a GET on a new session",
            first["ours"],
            first["bare"],
            "s",
            baseline_name="bare GET",
        ),
        Row(
            group,
            "reference: first token vs a GET on a new session",
            first["ref"],
            first["bare"],
            "s",
            baseline_name="bare GET",
        ),
    ]
    return rows, first["ours"], live["ours"]


async def _alternate(
    contenders: dict[str, Callable[[], Awaitable[None]]], rounds: int
) -> dict[str, float]:
    """Median seconds per call, the contenders taking turns round after round."""
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    for call in contenders.values():  # warm-up
        await call()
    for _ in range(rounds):
        for name, call in contenders.items():
            start = time.perf_counter()
            await call()
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in samples.items()}


async def _herds(
    mode: str, sdk: str, base: str, first: float, miss: float, quick: bool
) -> list[Row]:
    """Herds of concurrent callers: on new credentials (a cold start: compared with the first
    token of a new credential), and on a live credential asking for a resource it has no token
    for (compared with one cache miss on a live credential). Our wall time is the median of
    several herds; the reference's, which does not coalesce, of one."""
    sizes = (1, 10, 100) if quick else (1, 10, 100, 1000)
    repeats = 1 if quick else 5
    rows = []
    async with aiohttp.ClientSession() as admin:

        async def upstream() -> int:
            async with admin.get(base + "/count") as response:
                count: int = await response.json()
            await admin.post(base + "/reset")
            return count

        async def herd(credential: Any, scope: str, size: int) -> tuple[int, int, float]:
            """Upstream requests, distinct tokens, wall time."""
            await upstream()
            start = time.perf_counter()
            tokens = await asyncio.gather(*(credential.get_token(scope) for _ in range(size)))
            wall = time.perf_counter() - start
            return await upstream(), len({t.token for t in tokens}), wall

        async def cold_herd(factory: Callable[[], Any], size: int) -> tuple[int, int, float]:
            credential = factory()
            try:
                return await herd(credential, SCOPE, size)
            finally:
                await credential.close()

        for size in sizes:
            ours = [await cold_herd(_ours, size) for _ in range(repeats)]
            reference = await cold_herd(_reference, size)
            group = f"herd of {size} cold callers, {mode}, SDK {sdk}"
            wall = statistics.median(run[2] for run in ours)
            rows += [
                Row(
                    group,
                    "upstream requests (ours: the most in any herd)",
                    max(run[0] for run in ours),
                    reference[0],
                    "",
                    target="ours == 1" if size == 1000 else "",
                ),
                Row(group, "distinct tokens", max(run[1] for run in ours), reference[1], ""),
                Row(group, "wall time", wall, reference[2], "s"),
            ]
            if size == sizes[-1]:
                rows += [
                    Row(
                        group,
                        "ours: herd wall vs one cold acquisition",
                        wall,
                        first,
                        "s",
                        baseline_name="one cold call",
                        target="<= 2",
                    ),
                    Row(
                        group,
                        f"asyncio alone: gather {size} tasks awaiting one future",
                        await _gather_floor(size),
                        first,
                        "s",
                        baseline_name="one cold call",
                    ),
                ]

        size = sizes[-1]
        credential = _ours()
        deferred: list[tuple[int, int, float]] = []
        try:
            await credential.get_token(SCOPE)  # live: a token cached, a connection open
            resources = (f"https://herd{i}.example/.default" for i in itertools.count())
            live = []
            for _ in range(repeats):
                live.append(await herd(credential, next(resources), size))
                if sys.version_info >= (3, 12):
                    # The same herd with the acquisition started as Python 3.10 and 3.11 start
                    # it: a task whose first step waits behind every caller's.
                    with _acquisitions_started_lazily():
                        deferred.append(await herd(credential, next(resources), size))
        finally:
            await credential.close()
        group = f"herd of {size} callers for a new resource on a live credential, {mode}, SDK {sdk}"
        rows += [
            Row(
                group,
                "ours: upstream requests (the most in any herd)",
                max(r[0] for r in live),
                None,
                "",
            ),
            Row(
                group,
                "ours: herd wall vs one cache miss",
                statistics.median(r[2] for r in live),
                miss,
                "s",
                baseline_name="one cache miss",
            ),
        ]
        if deferred:
            rows.append(
                Row(
                    group,
                    "ours: herd wall, acquisition started eagerly vs at the next loop iteration",
                    statistics.median(r[2] for r in live),
                    statistics.median(r[2] for r in deferred),
                    "s",
                    baseline_name="next iteration",
                )
            )
    return rows


@contextlib.contextmanager
def _acquisitions_started_lazily() -> Iterator[None]:
    from mi_credential import _cache

    eager = _cache._start_task

    def lazy(coroutine: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        return asyncio.get_running_loop().create_task(coroutine)

    _cache._start_task = lazy
    try:
        yield
    finally:
        _cache._start_task = eager


async def _gather_floor(size: int) -> float:
    """What asyncio itself costs for a herd: gathering ``size`` tasks that await one future
    resolved a moment later (best of five)."""
    loop = asyncio.get_running_loop()

    async def wait(future: asyncio.Future[None]) -> None:
        await future

    best = float("inf")
    for _ in range(5):
        future: asyncio.Future[None] = loop.create_future()
        start = time.perf_counter()
        herd = asyncio.gather(*(wait(future) for _ in range(size)))
        await asyncio.sleep(0)
        future.set_result(None)
        await herd
        best = min(best, time.perf_counter() - start)
    return best


async def _memory(mode: str, sdk: str, quick: bool, clear: Callable[[], None]) -> list[Row]:
    """Bytes retained per credential holding one cached token. Spans already exported to the
    in-memory exporter are dropped before reading: they are the exporter's, not the credential's."""
    count = 10 if quick else 50
    per: dict[str, float] = {}
    for name, factory in (("ours", _ours), ("ref", _reference)):
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        credentials = []
        for _ in range(count):
            credential = factory()
            await credential.get_token(SCOPE)
            credentials.append(credential)
        clear()
        gc.collect()
        per[name] = (tracemalloc.get_traced_memory()[0] - before) / count
        tracemalloc.stop()
        for credential in credentials:
            await credential.close()
    return [
        Row(
            f"memory, {mode}, SDK {sdk}",
            "per credential with one cached token",
            per["ours"],
            per["ref"],
            "B",
            target="<= 0.10",
        )
    ]


_IMPORT_PROBE = """
import sys, time, tracemalloc
import asyncio  # an async application has its event loop machinery loaded already
def rss():
    with open('/proc/self/status') as f:
        return next(int(l.split()[1]) for l in f if l.startswith('VmRSS')) * 1024
measure_memory = sys.argv[2] == 'memory'
if measure_memory:
    tracemalloc.start()
r0 = rss(); t0 = time.perf_counter()
exec(sys.argv[1])
t1 = time.perf_counter(); r1 = rss()
traced = tracemalloc.get_traced_memory()[0] if measure_memory else 0
print(t1 - t0, traced, r1 - r0)
"""

_IMPORTS = {
    "ours": "from mi_credential import ManagedIdentityCredential",
    "ref": "from azure.identity.aio import ManagedIdentityCredential",
}


def _import_cost(quick: bool) -> list[Row]:
    """Import cost in fresh interpreters, with bytecode compiled (as an installed wheel has it;
    an editable install under PYTHONDONTWRITEBYTECODE would recompile our sources every time)."""
    environ = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    for statement in _IMPORTS.values():  # write the bytecode once
        subprocess.run(
            [sys.executable, "-c", statement + "; ManagedIdentityCredential()"],
            env=environ,
            check=True,
        )
    probes = {
        "import": _IMPORTS,
        "import + first credential": {
            name: f"{statement}; ManagedIdentityCredential()"
            for name, statement in _IMPORTS.items()
        },
    }
    rows = []
    for label, statements in probes.items():
        samples: dict[str, dict[str, list[float]]] = {
            name: {"time": [], "traced": [], "rss": []} for name in statements
        }
        for _ in range(3 if quick else 11):
            for name, statement in statements.items():
                for kind in ("time", "memory"):
                    output = subprocess.run(
                        [sys.executable, "-c", _IMPORT_PROBE, statement, kind],
                        capture_output=True,
                        text=True,
                        check=True,
                        env=environ,
                    ).stdout.split()
                    if kind == "time":
                        samples[name]["time"].append(float(output[0]))
                        samples[name]["rss"].append(float(output[2]))
                    else:
                        samples[name]["traced"].append(float(output[1]))
        med = {n: {k: statistics.median(v) for k, v in d.items()} for n, d in samples.items()}
        group = f"{label} (fresh interpreter, asyncio loaded)"
        target = "<= 0.50" if label == "import" else ""
        rows += [
            Row(group, "time", med["ours"]["time"], med["ref"]["time"], "s", target=target),
            Row(
                group,
                "memory allocated (tracemalloc)",
                med["ours"]["traced"],
                med["ref"]["traced"],
                "B",
                target=target,
            ),
            Row(group, "RSS added", med["ours"]["rss"], med["ref"]["rss"], "B", target=target),
        ]
    return rows


async def _live_misses(url: str, headers: dict[str, str], rounds: int) -> dict[str, float]:
    """Median seconds of a cache miss on a live credential, ours and the reference's (each call
    asks for a new resource), and of a GET of ``url`` on a live session."""
    resources = itertools.count()
    ours, reference = _ours(), _reference()
    session = aiohttp.ClientSession()

    async def ours_miss() -> None:
        await ours.get_token(f"https://r{next(resources)}.example/.default")

    async def reference_miss() -> None:
        await reference.get_token(f"https://r{next(resources)}.example/.default")

    async def bare() -> None:
        async with session.get(url, headers=headers) as response:
            await response.read()

    try:
        return await _alternate({"ours": ours_miss, "ref": reference_miss, "bare": bare}, rounds)
    finally:
        await ours.close()
        await reference.close()
        await session.close()


def _miss_rows(group: str, times: dict[str, float], target: str = "") -> list[Row]:
    """Rows for :func:`_live_misses`' figures: each library against the GET, and the time each
    adds to it compared (unlike the ratios to the GET, that does not depend on how the machine's
    speed compares with the endpoint's fixed latency)."""
    return [
        Row(
            group,
            "ours: cache miss vs a GET on a live session",
            times["ours"],
            times["bare"],
            "s",
            baseline_name="bare GET",
            target=target,
        ),
        Row(
            group,
            "reference: cache miss vs a GET on a live session",
            times["ref"],
            times["bare"],
            "s",
            baseline_name="bare GET",
        ),
        Row(
            group,
            "cache miss: time added to a GET on a live session",
            times["ours"] - times["bare"],
            times["ref"] - times["bare"],
            "s",
        ),
    ]


async def _latency_sweep(quick: bool) -> list[Row]:
    """A cache miss on a live credential against endpoints of different latencies (IMDS, SDK
    off). The time a library adds to the GET hardly depends on the latency, so its ratio to the
    GET does: a ratio measured at 5 ms says as much about the machine's speed as about the
    library. Between 0 and 5 ms the added time grows: code that runs after the process has sat
    idle in the event loop's poll runs slower (caches gone cold), for both libraries."""
    rows = []
    for latency in (0.0, LATENCY, 0.02):
        with running(latency) as base:
            _use_environment({"AZURE_POD_IDENTITY_AUTHORITY_HOST": base})
            url = f"{base}/metadata/identity/oauth2/token?api-version=2018-02-01&resource=x"
            times = await _live_misses(url, {"Metadata": "true"}, 8 if quick else 60)
        group = f"cold acquisition vs endpoint latency: {latency * 1000:g} ms, IMDS, SDK off"
        rows += _miss_rows(group, times)
    return rows


async def run(quick: bool) -> list[Row]:
    rows: list[Row] = await _latency_sweep(quick)  # before the SDK is installed, for good
    with running(LATENCY) as base:
        modes = {
            "IMDS": (
                {"AZURE_POD_IDENTITY_AUTHORITY_HOST": base},
                base + "/metadata/identity/oauth2/token?api-version=2018-02-01"
                "&resource=https://storage.azure.com",
                {"Metadata": "true"},
            ),
            "App Service": (
                {"IDENTITY_ENDPOINT": base + "/msi/token", "IDENTITY_HEADER": SECRET},
                base + "/msi/token?api-version=2019-08-01&resource=https://storage.azure.com",
                {"X-IDENTITY-HEADER": SECRET},
            ),
        }
        clear: Callable[[], None] = lambda: None  # noqa: E731
        for sdk in ("off", "on"):
            if sdk == "on":
                clear = _install_sdk()
            for mode, (environ, url, headers) in modes.items():
                _use_environment(environ)
                rows += await _cache_hits(mode, sdk, quick)
                clear()
                cold_rows, first, miss = await _cold(mode, sdk, url, headers, quick)
                rows += cold_rows
                clear()
                rows += await _herds(mode, sdk, base, first, miss, quick)
                clear()
                rows += await _memory(mode, sdk, quick, clear)
                clear()
    rows += _import_cost(quick)
    return rows


if __name__ == "__main__":
    main(run)
