"""The signing middleware's cost on a small GET, with the token cached.

The same GET goes to one loopback server through four sessions: a bare session (the baseline),
a session with ``BearerTokenMiddleware`` over a warm ``ManagedIdentityCredential``, a session
that sends a fixed ``Authorization`` header (what applications do without the middleware), and
a session whose middleware does nothing but set that same fixed header. The last one is the
floor for any middleware that signs requests: aiohttp's middleware dispatch plus the token's
bytes on the wire, with no decision and no credential. Each comparison interleaves two sessions
batch by batch. The server runs in another process, so its work does not share the measured
event loop.

    python -m benchmarks.bench_aiohttp [--quick]
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
from aiohttp import ClientHandlerType, ClientMiddlewareType, ClientRequest, ClientResponse, hdrs

from benchmarks._harness import Row, main
from mi_credential import ManagedIdentityCredential
from mi_credential.emulator import Emulator
from mi_credential_aiohttp import BearerTokenMiddleware

SCOPE = "api://benchmark-api/.default"
GROUP = "aiohttp client middleware"
_ROOT = Path(__file__).resolve().parents[1]


def serve() -> None:
    """The protected API's stand-in: ``GET /small`` answers ``1`` if the request carries a bearer
    token, else ``0``; ``GET /cpu`` answers the server's CPU time. Prints its port, then serves
    until terminated."""
    from aiohttp import web

    async def small(request: web.Request) -> web.Response:
        signed = request.headers.get("Authorization", "").startswith("Bearer ")
        return web.Response(body=b"1" if signed else b"0")

    async def cpu(request: web.Request) -> web.Response:
        return web.Response(text=repr(time.process_time()))

    async def run_server() -> None:
        app = web.Application()
        app.router.add_get("/small", small)
        app.router.add_get("/cpu", cpu)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        print(port, flush=True)
        await asyncio.Event().wait()

    asyncio.run(run_server())


async def _start_server() -> tuple[asyncio.subprocess.Process, int]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "from benchmarks.bench_aiohttp import serve; serve()",
        cwd=_ROOT,
        stdout=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    line = await asyncio.wait_for(process.stdout.readline(), timeout=30)
    return process, int(line)


class Sample:
    """Per-call figures of one contender: wall time per round, and CPU time in total."""

    def __init__(self) -> None:
        self.wall: list[float] = []
        self.cpu = 0.0
        self.calls = 0


async def _compare(
    ours: Callable[[], Awaitable[object]],
    baseline: Callable[[], Awaitable[object]],
    server_cpu: Callable[[], Awaitable[float]],
    *,
    batch: int,
    rounds: int,
    warmup: int,
) -> tuple[Sample, Sample]:
    """Time two contenders. A round runs one batch of each back to back, in the order AB, then
    BA in the next round, so that load drifting on the machine and the position within a round
    weigh on both alike. Wall time is sampled per batch; CPU time (this process and the
    server's) is summed over all batches: it is what the work costs, whatever else the machine
    is running."""
    for call in (ours, baseline):
        for _ in range(warmup):
            await call()
    samples = (Sample(), Sample())
    for index in range(rounds):
        order = ((0, ours), (1, baseline)) if index % 2 == 0 else ((1, baseline), (0, ours))
        for slot, call in order:
            server_start = await server_cpu()
            cpu_start = time.process_time()
            start = time.perf_counter()
            for _ in range(batch):
                await call()
            wall = time.perf_counter() - start
            cpu = time.process_time() - cpu_start
            cpu += await server_cpu() - server_start
            sample = samples[slot]
            sample.wall.append(wall / batch)
            sample.cpu += cpu
            sample.calls += batch
    return samples


def _rows(name: str, baseline_name: str, samples: tuple[Sample, Sample], target: str) -> list[Row]:
    ours, baseline = samples
    # Ratio of the medians (the table's figure), and the median of round-by-round ratios:
    # the two batches of a round ran back to back, under the same machine load.
    paired = statistics.median(o / b for o, b in zip(ours.wall, baseline.wall, strict=True))
    return [
        Row(
            GROUP,
            name,
            statistics.median(ours.wall),
            statistics.median(baseline.wall),
            "s",
            baseline_name=baseline_name,
            target=target,
            extra={"median_paired_ratio": paired, "rounds": len(ours.wall)},
        ),
        Row(
            GROUP,
            name + ", CPU (client + server)",
            ours.cpu / ours.calls,
            baseline.cpu / baseline.calls,
            "s",
            baseline_name=baseline_name,
        ),
    ]


def _fixed_header_middleware(token: str) -> ClientMiddlewareType:
    """The least a signing middleware can do: set a header it already has."""
    value = "Bearer " + token

    async def sign(request: ClientRequest, handler: ClientHandlerType) -> ClientResponse:
        request.headers[hdrs.AUTHORIZATION] = value
        return await handler(request)

    return sign


def _getter(session: aiohttp.ClientSession, url: str) -> Callable[[], Awaitable[bytes]]:
    async def get() -> bytes:
        async with session.get(url) as response:
            return await response.read()

    return get


async def run(quick: bool) -> list[Row]:
    """Seconds per GET through the middleware against a bare session and against a session
    with a fixed header: wall time (median of rounds) and CPU time."""
    process, port = await _start_server()
    try:
        async with (
            Emulator() as emulator,
            ManagedIdentityCredential(environ=emulator.environ("imds")) as credential,
        ):
            token = (await credential.get_token(SCOPE)).token  # warm: the token is cached
            middleware = BearerTokenMiddleware(
                credential, {f"127.0.0.1:{port}": SCOPE}, allow_http=["127.0.0.1"]
            )
            url = f"http://127.0.0.1:{port}/small"
            async with (
                aiohttp.ClientSession() as bare,
                aiohttp.ClientSession(middlewares=(middleware,)) as signed,
                aiohttp.ClientSession(headers={"Authorization": "Bearer " + token}) as static,
                aiohttp.ClientSession(middlewares=(_fixed_header_middleware(token),)) as floor,
                aiohttp.ClientSession() as control,
            ):

                async def server_cpu() -> float:
                    async with control.get(f"http://127.0.0.1:{port}/cpu") as response:
                        return float(await response.text())

                calls = {
                    "bare": _getter(bare, url),
                    "middleware": _getter(signed, url),
                    "static": _getter(static, url),
                    "floor": _getter(floor, url),
                }
                # The comparison is fair only if the middleware really signs and the bare
                # session really does not.
                answers = {name: await call() for name, call in calls.items()}
                if answers != {"bare": b"0", "middleware": b"1", "static": b"1", "floor": b"1"}:
                    raise RuntimeError(f"unexpected answers: {answers}")
                issued = emulator.issued
                size = {
                    "batch": 10 if quick else 20,
                    "rounds": 10 if quick else 500,
                    "warmup": 20 if quick else 200,
                }
                versus_bare = await _compare(calls["middleware"], calls["bare"], server_cpu, **size)
                versus_static = await _compare(
                    calls["middleware"], calls["static"], server_cpu, **size
                )
                versus_floor = await _compare(
                    calls["middleware"], calls["floor"], server_cpu, **size
                )
                floor_versus_bare = await _compare(
                    calls["floor"], calls["bare"], server_cpu, **size
                )
                if emulator.issued != issued:
                    raise RuntimeError("the credential requested a token while measured")
    finally:
        process.terminate()
        await process.wait()

    return [
        *_rows("small GET, token cached", "bare session", versus_bare, "<= 1.03"),
        *_rows("small GET, token cached", "fixed header", versus_static, ""),
        *_rows("small GET, token cached", "fixed-header middleware", versus_floor, ""),
        *_rows("floor: a middleware setting a fixed header", "bare session", floor_versus_bare, ""),
    ]


if __name__ == "__main__":
    main(run)
