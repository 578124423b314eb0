"""The shared token cache (``shared_cache=``): what it costs where it should cost nothing, what a
token read from its file saves against asking the endpoint, and how many requests a cold start of
many worker processes makes, ours side by side with azure-identity's.

* **Cache hit**: ``get_token`` with a token in the in-process cache, shared cache on and off (the
  hit path never touches a file: the ratio should be 1), and azure-identity's hit.
* **A miss served from the file**: a credential with its own, empty in-process cache asks for a
  token another credential already stored in the shared directory; compared with the same miss
  asked of the 5 ms endpoint (shared cache off) and with azure-identity's cold acquisition.
* **Cold start of worker processes**: 8 and 32 processes (4 and 8 with ``--quick``), each
  creating a credential (ours: one shared directory), released together once all are ready to
  ask for one token; the endpoint counts the requests it received.

The endpoint is ``_fake_endpoint`` in another process (IMDS, 5 ms of artificial latency). Each
shared cache is a fresh ``tempfile.mkdtemp()`` directory, removed afterwards.

    python -m benchmarks.bench_shared_cache            # full run
    python -m benchmarks.bench_shared_cache --quick    # smoke run
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from functools import partial
from typing import Any

import aiohttp

from mi_credential import ManagedIdentityCredential
from mi_credential._constants import EnvironmentVariables
from mi_credential._shared_cache import ENVIRONMENT_VARIABLE

from ._fake_endpoint import running
from ._harness import Row, interleaved, main
from .bench_credential import _alternate, _reference, _use_environment

SCOPE = "https://storage.azure.com/.default"
LATENCY = 0.005
MODE = "IMDS"
ENDPOINT = f"{LATENCY * 1000:g} ms endpoint"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@contextlib.contextmanager
def _fresh_directory() -> Iterator[str]:
    """A new private directory (``0700``) for one shared cache; removed afterwards."""
    directory = tempfile.mkdtemp(prefix="mi-credential-bench-")
    os.chmod(directory, 0o700)
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _ours(shared_cache: bool | str) -> ManagedIdentityCredential:
    return ManagedIdentityCredential(shared_cache=shared_cache)


async def _cache_hits(quick: bool) -> list[Row]:
    """Shared cache on against off, batches in ABBA order (on, off, off, on, ...) so that
    neither always runs after the other; then shared cache on against the reference."""
    with _fresh_directory() as directory:
        on, off, reference = _ours(directory), _ours(False), _reference()
        try:
            for credential in (on, off, reference):
                await credential.get_token(SCOPE)
            batch, batches = (300, 20) if quick else (1000, 200)
            on_call: Callable[[], Awaitable[Any]] = partial(on.get_token, SCOPE)
            off_call: Callable[[], Awaitable[Any]] = partial(off.get_token, SCOPE)
            pair = await _abba(on_call, off_call, batch=batch, batches=batches)
            ours_ref = await interleaved(
                {"on": on_call, "ref": partial(reference.get_token, SCOPE)},
                batch=batch,
                batches=batches // 2,
            )
        finally:
            for credential in (on, off, reference):
                await credential.close()
    group = f"shared cache: cache hit, {MODE}"
    return [
        Row(
            group,
            "get_token per call: shared cache on vs off",
            pair[0],
            pair[1],
            "s",
            baseline_name="shared cache off",
            target="<= 1.05",
        ),
        Row(group, "get_token per call, shared cache on", ours_ref["on"], ours_ref["ref"], "s"),
    ]


async def _abba(
    first: Callable[[], Awaitable[Any]],
    second: Callable[[], Awaitable[Any]],
    *,
    batch: int,
    batches: int,
    warmup: int = 200,
) -> tuple[float, float]:
    """Median seconds per call of two contenders, their batches in ABBA order."""
    for call in (first, second):
        for _ in range(warmup):
            await call()
    samples: tuple[list[float], list[float]] = ([], [])
    for index in range(batches):
        order = (0, 1) if index % 2 == 0 else (1, 0)
        for which in order:
            call = (first, second)[which]
            start = time.perf_counter()
            for _ in range(batch):
                await call()
            samples[which].append((time.perf_counter() - start) / batch)
    return statistics.median(samples[0]), statistics.median(samples[1])


async def _misses(quick: bool) -> list[Row]:
    """Cache misses on live credentials (each call asks for a resource the credential has no
    token for) and first tokens of new credentials, each contender taking its turn round after
    round. A token served from the file is checked to be the one the first credential stored."""
    rounds = 8 if quick else 60
    resources = (f"https://r{i}.example/.default" for i in itertools.count())
    with _fresh_directory() as directory:
        writer, reader = _ours(directory), _ours(directory)
        on, off, reference = _ours(directory), _ours(False), _reference()
        live = (writer, reader, on, off, reference)
        try:
            back_to_back = 30 if quick else 200
            stored = {}
            for _ in range(rounds + 1 + back_to_back):  # one for the warm-up
                resource = next(resources)
                stored[resource] = (await writer.get_token(resource)).token
            expected = (await writer.get_token(SCOPE)).token
            waiting = iter(stored)

            async def from_file() -> None:
                resource = next(waiting)
                token = await reader.get_token(resource)
                assert token.token == stored[resource], "the token was not the stored one"

            async def nothing_stored() -> None:
                await on.get_token(next(resources))

            async def shared_off() -> None:
                await off.get_token(next(resources))

            async def reference_miss() -> None:
                await reference.get_token(next(resources))

            miss = await _alternate(
                {
                    "file": from_file,
                    "absent": nothing_stored,
                    "off": shared_off,
                    "ref": reference_miss,
                },
                rounds,
            )

            async def first(factory: Callable[[], Any], check: bool = False) -> None:
                async with factory() as credential:
                    token = await credential.get_token(SCOPE)
                assert not check or token.token == expected, "the token was not the stored one"

            new = await _alternate(
                {
                    "file": partial(first, partial(_ours, directory), True),
                    "off": partial(first, partial(_ours, False)),
                    "ref": partial(first, _reference),
                },
                rounds,
            )
            start = time.perf_counter()
            for _ in range(back_to_back):
                await from_file()
            warm = (time.perf_counter() - start) / back_to_back
            read = _read_alone(reader, SCOPE, 200 if quick else 2000)
        finally:
            for credential in live:
                await credential.close()
    group = f"shared cache: a miss served from the file, {MODE}, {ENDPOINT}"
    return [
        Row(
            group,
            "miss on a live credential: from the file vs from the endpoint (ours)",
            miss["file"],
            miss["off"],
            "s",
            baseline_name="endpoint",
        ),
        Row(group, "miss on a live credential: from the file", miss["file"], miss["ref"], "s"),
        Row(
            group,
            "ours: miss from the file, calls back to back",
            warm,
            miss["file"],
            "s",
            baseline_name="taking turns",
        ),
        Row(
            group,
            "ours: one entry read and decoded, alone",
            read,
            miss["file"],
            "s",
            baseline_name="miss, taking turns",
        ),
        Row(
            group,
            "miss on a live credential, nothing stored: shared cache on vs off",
            miss["absent"],
            miss["off"],
            "s",
            baseline_name="shared cache off",
        ),
        Row(
            group,
            "first token of a new credential: from the file vs from the endpoint (ours)",
            new["file"],
            new["off"],
            "s",
            baseline_name="endpoint",
        ),
        Row(group, "first token of a new credential: from the file", new["file"], new["ref"], "s"),
    ]


def _read_alone(credential: ManagedIdentityCredential, scope: str, count: int) -> float:
    """Median seconds of the store's read of one entry (open, fstat, read, decode), in batches."""
    store, source = credential._store, credential._source
    assert store is not None and source is not None
    target = source.target((scope,), None, False)
    assert store.read(target) is not None
    samples = []
    for _ in range(11):
        start = time.perf_counter()
        for _ in range(count):
            store.read(target)
        samples.append((time.perf_counter() - start) / count)
    return statistics.median(samples)


# A worker process: loads aiohttp (an async application has it loaded already), imports its
# library and creates its credential, says it is ready, waits for the word, then asks for one
# token; prints a digest of the token and the (system-wide) monotonic time it had it at.
_WORKER = """
import asyncio, hashlib, sys, time
import aiohttp
library, directory, scope = sys.argv[1:4]
if library == "ours":
    from mi_credential import ManagedIdentityCredential
    options = {"shared_cache": directory}
else:
    from azure.identity.aio import ManagedIdentityCredential
    options = {}
async def main():
    async with ManagedIdentityCredential(**options) as credential:
        print("ready", flush=True)
        sys.stdin.readline()
        token = await credential.get_token(scope)
        print(hashlib.sha256(token.token.encode()).hexdigest(), time.monotonic(), flush=True)
asyncio.run(main())
"""


async def _cold_start(
    library: str, size: int, base: str, admin: aiohttp.ClientSession
) -> dict[str, float]:
    """``size`` worker processes released together; the endpoint's requests and tokens, the
    distinct tokens the workers got, and seconds from the release until the last had its."""
    # Bytecode compiled, as an installed wheel has it (see bench_credential's import cost).
    left_out = {*EnvironmentVariables.ALL, ENVIRONMENT_VARIABLE, "PYTHONDONTWRITEBYTECODE"}
    environ = {name: value for name, value in os.environ.items() if name not in left_out}
    environ[EnvironmentVariables.AZURE_POD_IDENTITY_AUTHORITY_HOST] = base
    async with admin.post(base + "/reset"):
        pass
    with _fresh_directory() as directory:
        spawned = time.monotonic()
        workers = [
            await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                _WORKER,
                library,
                directory,
                SCOPE,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=environ,
                cwd=ROOT,
            )
            for _ in range(size)
        ]
        try:
            for worker in workers:
                if await _line(worker) != "ready":
                    said = (await worker.communicate())[1].decode()
                    raise RuntimeError(f"a {library} worker did not start: {said[-2000:]}")
            ready = released = time.monotonic()
            for worker in workers:
                assert worker.stdin is not None
                worker.stdin.write(b"go\n")
            for worker in workers:
                assert worker.stdin is not None
                await worker.stdin.drain()
            results = await asyncio.gather(*(worker.communicate() for worker in workers))
        finally:
            for worker in workers:
                if worker.returncode is None:
                    worker.kill()
                    await worker.wait()
    digests: set[str] = set()
    times: list[float] = []
    messages: set[str] = set()
    for worker, (stdout, stderr) in zip(workers, results, strict=True):
        if worker.returncode != 0:
            raise RuntimeError(f"a {library} worker failed: {stderr.decode()[-2000:]}")
        messages.add(stderr.decode().strip())
        digest, at = stdout.decode().split()
        digests.add(digest)
        times.append(float(at))
    for text in sorted(messages - {""}):  # warnings a worker logged: worth seeing with the figures
        print(f"a {library} worker of {size} said:\n{text}", file=sys.stderr)
    async with admin.get(base + "/received") as response:
        received: int = await response.json()
    async with admin.get(base + "/count") as response:
        issued: int = await response.json()
    return {
        "received": received,
        "issued": issued,
        "distinct": len(digests),
        "wall": max(times) - released,
        "startup": ready - spawned,
    }


async def _line(worker: asyncio.subprocess.Process) -> str:
    assert worker.stdout is not None
    return (await worker.stdout.readline()).decode().strip()


async def _cold_starts(base: str, quick: bool) -> list[Row]:
    sizes = (4, 8) if quick else (8, 32)
    rows = []
    async with aiohttp.ClientSession() as admin:
        for library in ("ours", "ref"):  # a worker of each first, which writes the bytecode
            await _cold_start(library, 1, base, admin)
        for size in sizes:
            runs: dict[str, list[dict[str, float]]] = {"ours": [], "ref": []}
            repeats = 1 if quick else 5 if size <= 8 else 3
            for _ in range(repeats):  # alternating, so that drifting load weighs on both
                for library in runs:
                    runs[library].append(await _cold_start(library, size, base, admin))
            ours = {key: [run[key] for run in runs["ours"]] for key in runs["ours"][0]}
            ref = {key: [run[key] for run in runs["ref"]] for key in runs["ref"][0]}
            group = f"shared cache: cold start of {size} worker processes, {MODE}, {ENDPOINT}"
            extra = {
                "repeats": repeats,
                "ours": runs["ours"],
                "reference": runs["ref"],
            }
            rows += [
                Row(
                    group,
                    "endpoint requests per process (the most in any run)",
                    max(ours["received"]) / size,
                    max(ref["received"]) / size,
                    "",
                    target=f"ours == 1/{size}",
                    extra=extra,
                ),
                Row(
                    group,
                    "endpoint requests (the most in any run)",
                    max(ours["received"]),
                    max(ref["received"]),
                    "",
                    target="ours == 1",
                ),
                Row(
                    group,
                    "distinct tokens (the most in any run)",
                    max(ours["distinct"]),
                    max(ref["distinct"]),
                    "",
                ),
                Row(
                    group,
                    "wall time: released together until all have a token",
                    statistics.median(ours["wall"]),
                    statistics.median(ref["wall"]),
                    "s",
                ),
                Row(
                    group,
                    "start-up: spawned until all ready (imports, credential)",
                    statistics.median(ours["startup"]),
                    statistics.median(ref["startup"]),
                    "s",
                ),
            ]
    return rows


async def run(quick: bool) -> list[Row]:
    with running(LATENCY) as base:
        _use_environment({EnvironmentVariables.AZURE_POD_IDENTITY_AUTHORITY_HOST: base})
        try:
            rows = await _cache_hits(quick)
            rows += await _misses(quick)
            rows += await _cold_starts(base, quick)
        finally:
            os.environ.pop(EnvironmentVariables.AZURE_POD_IDENTITY_AUTHORITY_HOST, None)
    return rows


if __name__ == "__main__":
    main(run)
