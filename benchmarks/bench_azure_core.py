"""The azure-core integration, side by side with azure-core's ``AsyncBearerTokenCredentialPolicy``.

Rows:

- **Per-request overhead** of the authentication policy in an ``AsyncPipeline`` whose transport
  does no I/O (it answers 200 at once), with a cached token. Three pipelines run interleaved
  in one loop: no authentication policy, azure-core's policy, ours; both policies use the same
  warmed ``ManagedIdentityCredential``. The overhead is a pipeline's time per request minus
  that of the pipeline without a policy; the row's ratio compares the overheads (ours /
  azure-core's). The total time per request is reported too.
- **Ten clients at refresh time**: ten clients, one shared credential, each sends one request
  at the same moment once the token is past its refresh time; the figure is how many token
  requests reach the managed identity endpoint. Ours (our policy, our credential) against
  azure-core's policy with azure-identity's ``ManagedIdentityCredential``, and against
  azure-core's policy with our credential.
- **Refresh failure**: the same moment with the endpoint answering 503: how many of the ten
  requests fail although the token is still valid.
- **Revocation (CAE)**: the service revokes the token the ten clients hold and sends a claims
  challenge; requests go one client after the other. How many claims token requests reach the
  endpoint (same credential for both policies).

The endpoint is the emulator's App Service route; the clients' service is an HTTPS-less loopback
server (``enforce_https=False``). azure-identity and azure-core read ``time.time()``: the
refresh rows move it forward with a patch of ``time.time`` that the emulator and our credential
share, so every party sees the same clock. Needs the ``bench`` extra (azure-identity).

    python -m benchmarks.bench_azure_core [--quick]
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from aiohttp import web
from azure.core.pipeline import AsyncPipeline
from azure.core.pipeline.policies import AsyncBearerTokenCredentialPolicy
from azure.core.pipeline.transport import AsyncHttpTransport
from azure.core.rest import HttpRequest

from mi_credential import ManagedIdentityCredential
from mi_credential.emulator import Emulator, Fault
from mi_credential_azure_core import BearerTokenPolicy

from ._harness import Row, interleaved, main

SCOPE = "https://vault.azure.net/.default"
CLIENTS = 10
GROUP_OVERHEAD = "azure-core policy: per-request overhead, no-I/O transport"
GROUP_REFRESH = "azure-core policy: ten clients sharing one credential (ours: our policy + ours)"
BASELINE = "azure-core"


# -- per-request overhead ----------------------------------------------------------------------


class _Response:
    """What the authentication policies read of a response: its status and headers."""

    status_code = 200
    headers: dict[str, str] = {}  # noqa: RUF012 - read only


class NoIOTransport(AsyncHttpTransport):  # type: ignore[type-arg]
    """Answers every request with 200 at once: the pipeline's own cost, and nothing else."""

    async def send(self, request: Any, **kwargs: Any) -> Any:
        return _Response()

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def __aexit__(self, *args: object) -> None:
        return None


async def _overhead(credential: ManagedIdentityCredential, quick: bool) -> list[Row]:
    url = "https://service.example/resource"

    def runner(policies: list[Any]) -> Callable[[], Awaitable[Any]]:
        pipeline: AsyncPipeline[Any, Any] = AsyncPipeline(NoIOTransport(), policies)

        async def call() -> Any:
            return await pipeline.run(HttpRequest("GET", url))

        return call

    ours: BearerTokenPolicy[Any, Any] = BearerTokenPolicy(credential, SCOPE)
    theirs: AsyncBearerTokenCredentialPolicy[Any, Any] = AsyncBearerTokenCredentialPolicy(
        credential, SCOPE
    )
    calls = {"none": runner([]), "azure-core": runner([theirs]), "ours": runner([ours])}
    times = await interleaved(
        calls, batch=500 if quick else 2000, batches=5 if quick else 41, warmup=200
    )
    ours_overhead = times["ours"] - times["none"]
    theirs_overhead = times["azure-core"] - times["none"]
    return [
        Row(
            GROUP_OVERHEAD,
            "overhead per request",
            ours_overhead,
            theirs_overhead,
            "s",
            baseline_name=BASELINE,
            target="<= 1.0",
        ),
        Row(
            GROUP_OVERHEAD,
            "pipeline per request",
            times["ours"],
            times["azure-core"],
            "s",
            baseline_name=BASELINE,
            extra={"no_policy": times["none"]},
        ),
    ]


# -- ten clients ---------------------------------------------------------------------------------


class ShiftedTime:
    """``time.time`` plus an offset that a benchmark moves forward: azure-identity and
    azure-core read ``time.time()`` themselves, so the patch is the only way to reach a token's
    refresh time without waiting for it."""

    def __init__(self) -> None:
        self.offset = 0.0
        self._real = time.time

    def __call__(self) -> float:
        return self._real() + self.offset

    @contextlib.contextmanager
    def installed(self) -> Iterator[ShiftedTime]:
        time.time = self
        try:
            yield self
        finally:
            time.time = self._real


class Service:
    """The clients' service on loopback: 200, or a claims challenge for a revoked token."""

    def __init__(self) -> None:
        self.revoked: set[str] = set()
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def start(self) -> Service:
        async def handle(request: web.Request) -> web.Response:
            token = request.headers.get("Authorization", "").removeprefix("Bearer ")
            if token in self.revoked:
                return web.json_response(
                    {},
                    status=401,
                    headers={
                        "WWW-Authenticate": 'Bearer error="insufficient_claims", '
                        'claims="eyJhY2Nlc3NfdG9rZW4iOnsibmJmIjp7ImVzc2VudGlhbCI6dHJ1ZX19fQ"'
                    },
                )
            return web.json_response({})

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


class Clients:
    """``CLIENTS`` pipelines, each with its own authentication policy and HTTP session."""

    def __init__(self, url: str, make_policy: Callable[[], Any]) -> None:
        from azure.core.pipeline.transport import AioHttpTransport

        self.url = url
        self.pipelines: list[AsyncPipeline[Any, Any]] = [
            AsyncPipeline(AioHttpTransport(), [make_policy()]) for _ in range(CLIENTS)
        ]

    async def one(self, index: int) -> int:
        response = await self.pipelines[index].run(
            HttpRequest("GET", self.url), enforce_https=False
        )
        status: int = response.http_response.status_code
        return status

    async def all_at_once(self) -> list[int | BaseException]:
        return await asyncio.gather(*(self.one(i) for i in range(CLIENTS)), return_exceptions=True)

    async def close(self) -> None:
        for pipeline in self.pipelines:
            await pipeline.__aexit__()


async def _fan_out(
    emulator: Emulator,
    service: Service,
    clock: ShiftedTime,
    make_credential: Callable[[], Any],
    make_policy: Callable[[Any], Any],
    *,
    fail_refresh: bool,
) -> tuple[int, int]:
    """Warm ten clients, move past the refresh time, send ten requests at once. Returns the
    token requests the endpoint saw after the move, and how many of the ten requests failed."""
    credential = make_credential()
    clients = Clients(service.url, lambda: make_policy(credential))
    try:
        for index in range(CLIENTS):
            await clients.one(index)
        before = len(emulator.requests)
        if fail_refresh:
            emulator.add_fault(Fault.status_code(503, times=None))
        # 12 h into a 24 h token: past every party's refresh time (and azure-core's 60 s of
        # jitter), well before expiry.
        clock.offset += 12 * 3600 + 120
        results = await clients.all_at_once()
        for _ in range(200):  # a background refresh runs on its own task: let it finish
            if len(emulator.requests) > before and all(
                r.status is not None for r in emulator.requests
            ):
                break
            await asyncio.sleep(0.01)
        failed = sum(1 for r in results if not isinstance(r, int) or r != 200)
        return len(emulator.requests) - before, failed
    finally:
        emulator.faults.clear()
        await clients.close()
        await credential.close()


async def _revocation(
    emulator: Emulator, service: Service, credential: Any, make_policy: Callable[[Any], Any]
) -> int:
    clients = Clients(service.url, lambda: make_policy(credential))
    try:
        for index in range(CLIENTS):
            await clients.one(index)
        service.revoked.update(emulator.issued_tokens)
        before = len(emulator.requests)
        for index in range(CLIENTS):
            assert await clients.one(index) == 200
        return len(emulator.requests) - before
    finally:
        service.revoked.clear()
        await clients.close()


async def _ten_clients() -> list[Row]:
    reference_type: Any = None
    try:
        from azure.identity.aio import ManagedIdentityCredential as reference_type
    except ImportError:  # pragma: no cover - the bench extra brings it
        print("azure-identity is not installed (pip install -e '.[bench]'): skipping its rows")

    clock = ShiftedTime()
    rows: list[Row] = []
    with clock.installed():
        async with Emulator(clock=clock) as emulator:
            service = await Service().start()
            environ = emulator.environ("app_service")
            try:

                def ours() -> ManagedIdentityCredential:
                    return ManagedIdentityCredential(environ=environ, clock=clock)

                def reference() -> Any:
                    assert reference_type is not None
                    saved = {k: os.environ.get(k) for k in environ}
                    os.environ.update(environ)
                    try:
                        return reference_type()
                    finally:
                        for key, value in saved.items():
                            if value is None:
                                os.environ.pop(key, None)
                            else:
                                os.environ[key] = value

                def our_policy(credential: Any) -> Any:
                    return BearerTokenPolicy(credential, SCOPE)

                def their_policy(credential: Any) -> Any:
                    return AsyncBearerTokenCredentialPolicy(credential, SCOPE)

                for fail, unit in ((False, "requests"), (True, "failed")):
                    ours_result = await _fan_out(
                        emulator, service, clock, ours, our_policy, fail_refresh=fail
                    )
                    mixed = await _fan_out(
                        emulator, service, clock, ours, their_policy, fail_refresh=fail
                    )
                    figure = 1 if fail else 0
                    name = (
                        "refresh, endpoint failing: failed" if fail else "refresh: token requests"
                    )
                    if reference_type is not None:
                        theirs = await _fan_out(
                            emulator, service, clock, reference, their_policy, fail_refresh=fail
                        )
                        rows.append(
                            Row(
                                GROUP_REFRESH,
                                name,
                                ours_result[figure],
                                theirs[figure],
                                unit,
                                baseline_name="core + azure-identity",
                            )
                        )
                    rows.append(
                        Row(
                            GROUP_REFRESH,
                            name,
                            ours_result[figure],
                            mixed[figure],
                            unit,
                            baseline_name="core + ours",
                        )
                    )

                credential = ours()
                try:
                    ours_claims = await _revocation(emulator, service, credential, our_policy)
                    theirs_claims = await _revocation(emulator, service, credential, their_policy)
                finally:
                    await credential.close()
                rows.append(
                    Row(
                        GROUP_REFRESH,
                        "revocation: claims requests",
                        ours_claims,
                        theirs_claims,
                        "requests",
                        baseline_name="core + ours",
                    )
                )
            finally:
                await service.close()
    return rows


async def run(quick: bool) -> list[Row]:
    """The rows above; ``quick`` runs fewer timing batches."""
    # The failing-refresh rows log warnings by design; keep the report readable.
    logging.getLogger("mi_credential").setLevel(logging.ERROR)
    logging.getLogger("azure").setLevel(logging.ERROR)
    async with Emulator() as emulator:
        credential = ManagedIdentityCredential(environ=emulator.environ("app_service"))
        try:
            await credential.get_token_info(SCOPE)
            rows = await _overhead(credential, quick)
        finally:
            await credential.close()
    return rows + await _ten_clients()


if __name__ == "__main__":
    main(run)
