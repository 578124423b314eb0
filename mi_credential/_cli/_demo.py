"""``demo``: the library end to end, against the in-process emulator.

1. The credential directly: a token through each hosting source, a cache hit, fifty
   concurrent callers sharing one request, a throttled endpoint retried, and the typed error
   for an identity that is not assigned.
2. A FastAPI application (``ManagedIdentityMiddleware``, served by uvicorn) whose handler calls
   a protected API through a session signed by the aiohttp middleware.
3. An azure-core pipeline client, built as Azure SDK clients are, with ``BearerTokenPolicy``,
   calling the same protected API.

Every credential and integration records with SDK providers the demo passes explicitly; the
report shows the span tree, the metric values, acquisition latency per source and the cache hit
ratio. No token or secret is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import textwrap
import time
import uuid
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any, TextIO

import aiohttp
from azure.core import AsyncPipelineClient
from azure.core.pipeline.policies import (
    AsyncRetryPolicy,
    HeadersPolicy,
    HttpLoggingPolicy,
    RequestIdPolicy,
    UserAgentPolicy,
)
from azure.core.pipeline.transport import AioHttpTransport
from azure.core.rest import HttpRequest
from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer

from mi_credential_azure_core import BearerTokenPolicy

from .. import _constants
from .._credential import ManagedIdentityCredential
from .._errors import CredentialUnavailableError
from .._models import ManagedIdentitySource
from ..emulator import Emulator, Fault
from . import _report
from ._demo_services import (
    CALL_TIMEOUT,
    ORDERS_AUDIENCE,
    ORDERS_SCOPE,
    OrdersApi,
    build_fastapi_app,
    client_ssl_context,
    serve,
    traced_headers,
)
from ._demo_telemetry import DemoTelemetry, MissingDependencyError

_S = ManagedIdentitySource

STORAGE_SCOPE = "https://storage.azure.com/.default"
VAULT_SCOPE = "https://vault.azure.net/.default"
MANAGEMENT_SCOPE = "https://management.azure.com/.default"
CONCURRENT_CALLERS = 50
#: Seconds a step may take before it counts as failed: the demo never hangs.
STEP_TIMEOUT = 30.0
#: While holding, token responses that can carry ``refresh_in`` carry this one, so that
#: background refreshes show in the metrics.
HOLD_REFRESH_IN = 60
#: Seconds between OTLP pushes while holding.
PUSH_INTERVAL = 10.0
_WIDTH = 96

EXIT_OK = 0
EXIT_PROBLEM = 1
EXIT_MISSING_DEPENDENCY = 3


class DemoError(Exception):
    """Something the demo checks did not happen as it should."""


@dataclass
class DemoOptions:
    """What ``python -m mi_credential demo`` was asked for.

    Attributes:
        otlp: Base URL of an OTLP/HTTP receiver to send spans and metrics to as well.
        prometheus_port: Serve the Prometheus exposition on 127.0.0.1 at this port (0: any).
        hold: Seconds to keep everything running after the report, with light traffic.
    """

    otlp: str | None = None
    prometheus_port: int | None = None
    hold: float = 0.0


class Demo:
    """One run of the demo. ``await Demo().run()`` returns the exit code.

    Args:
        options: What to run with.
        out: Where the report goes (default: standard output).
    """

    def __init__(self, options: DemoOptions | None = None, *, out: TextIO | None = None) -> None:
        self.options = options or DemoOptions()
        self.out = out or sys.stdout
        self.results: dict[str, bool] = {}
        self.secrets: list[str] = []
        """Every secret the emulator handed out, kept when it stops (for leak checks)."""
        self.telemetry: DemoTelemetry | None = None
        self._stack = AsyncExitStack()
        self._emulator: Emulator | None = None
        self._orders: OrdersApi | None = None
        self._client: aiohttp.ClientSession | None = None
        self._app_url: str | None = None
        self._pipeline: AsyncPipelineClient[Any, Any] | None = None
        self._traffic: list[tuple[ManagedIdentityCredential, str]] = []
        self._traffic_failures: list[str] = []
        self._otlp_ok = True

    @property
    def emulator(self) -> Emulator | None:
        """The emulator of the current or last run."""
        return self._emulator

    def say(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    async def run(self) -> int:
        """Run every step, print the report, and return the exit code."""
        try:
            telemetry = DemoTelemetry(
                prometheus_port=self.options.prometheus_port, otlp=self.options.otlp
            )
        except MissingDependencyError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_MISSING_DEPENDENCY
        self.telemetry = telemetry
        try:
            async with self._stack:
                await self._run(telemetry)
        finally:
            telemetry.shutdown()
        failed = [title for title, ok in self.results.items() if not ok]
        if failed:
            self.say(f"\nResult: FAILED ({'; '.join(failed)})")
        elif self._traffic_failures:
            self.say(
                f"\nResult: FAILED ({len(self._traffic_failures)} calls failed while holding, "
                f"the first: {self._traffic_failures[0]})"
            )
        elif not self._otlp_ok:
            self.say("\nResult: FAILED (the OTLP export)")
        else:
            self.say("\nResult: OK, every step worked.")
        ok = not failed and not self._traffic_failures and self._otlp_ok
        return EXIT_OK if ok else EXIT_PROBLEM

    # -- the run ---------------------------------------------------------------------------------

    async def _run(self, telemetry: DemoTelemetry) -> None:
        stack = self._stack
        emulator = Emulator(refresh_in=HOLD_REFRESH_IN if self.options.hold else None)
        await stack.enter_async_context(emulator)
        self._emulator = emulator
        stack.callback(self._keep_secrets, emulator)
        # Azure Arc clients read challenge key files only from the agent's directory; the
        # emulator writes them to its own.
        stack.callback(setattr, _constants, "ARC_KEY_DIRECTORY", _constants.ARC_KEY_DIRECTORY)
        _constants.ARC_KEY_DIRECTORY = emulator.arc_key_dir

        self._orders = await OrdersApi(emulator, telemetry.tracer).start()
        stack.push_async_callback(self._orders.close)
        self._client = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=client_ssl_context(emulator.ca_file)),
            timeout=aiohttp.ClientTimeout(total=CALL_TIMEOUT),
        )
        stack.push_async_callback(self._client.close)
        prometheus_url = ""
        if telemetry.prometheus is not None:
            prometheus_url = await telemetry.prometheus.start()
            stack.push_async_callback(telemetry.prometheus.close)

        self.say("mi-credential demo: the library end to end, against a local emulator")
        self.say()
        self.say(
            f"   Emulator     {emulator.http_url:<25} IMDS, App Service, Azure Arc, Azure ML, "
            "Cloud Shell"
        )
        self.say(f"                {emulator.https_url:<25} Service Fabric, Microsoft Entra ID")
        self.say(f"   Orders API   {self._orders.url}, accepts only tokens for {ORDERS_AUDIENCE}")
        if prometheus_url:
            self.say(f"   Prometheus   {prometheus_url}")
        if telemetry.otlp is not None:
            self.say(f"   OTLP         {telemetry.otlp.endpoint}, receives the spans and metrics")

        steps: list[tuple[str, Callable[[], Awaitable[None]]]] = [
            ("1. The credential, directly", self._step_credential),
            ("2. FastAPI app -> Orders API", self._step_fastapi),
            ("3. azure-core pipeline client -> Orders API", self._step_azure_core),
        ]
        with telemetry.tracer.start_as_current_span("mi-credential demo"):
            for title, step in steps:
                self.results[title] = await self._step(telemetry.tracer, title, step)

        self._report(telemetry)
        if telemetry.otlp is not None:
            self._otlp_ok = await telemetry.push()
            self._say_otlp(telemetry)
        if self.options.hold > 0:
            await self._hold(telemetry, self.options.hold, prometheus_url)
            if telemetry.otlp is not None:
                self._otlp_ok = await telemetry.push() and self._otlp_ok
                self._say_otlp(telemetry)

    def _keep_secrets(self, emulator: Emulator) -> None:
        self.secrets = emulator.secrets()

    async def _step(self, tracer: Tracer, title: str, step: Callable[[], Awaitable[None]]) -> bool:
        self.say(f"\n{title}")
        with tracer.start_as_current_span(title) as span:
            try:
                await asyncio.wait_for(step(), STEP_TIMEOUT)
            except asyncio.TimeoutError:
                span.set_status(Status(StatusCode.ERROR, "timeout"))
                self._wrap(f"FAILED: timed out (a step may take {STEP_TIMEOUT:g} s at most)")
            except Exception as exc:  # the demo reports any failure and goes on
                span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                self._wrap(f"FAILED: {type(exc).__name__}: {exc}")
            else:
                return True
        return False

    def _wrap(self, text: str, indent: str = "   ") -> None:
        self.say(
            textwrap.fill(text, _WIDTH, initial_indent=indent, subsequent_indent=indent + "  ")
        )

    def _need(self) -> tuple[Emulator, DemoTelemetry, OrdersApi, aiohttp.ClientSession]:
        assert self._emulator and self.telemetry and self._orders and self._client
        return self._emulator, self.telemetry, self._orders, self._client

    async def _credential(
        self, source: ManagedIdentitySource, **kwargs: Any
    ) -> ManagedIdentityCredential:
        emulator, telemetry, _, _ = self._need()
        credential = ManagedIdentityCredential(
            environ=emulator.environ(source),
            connection_verify=emulator.ca_file,
            timeout=CALL_TIMEOUT,
            **telemetry.credential_options(),
            **kwargs,
        )
        return await self._stack.enter_async_context(credential)

    # -- step 1 ----------------------------------------------------------------------------------

    async def _step_credential(self) -> None:
        emulator, _, _, _ = self._need()
        self.say(
            f"   {'source':<18} {'first call':>10} {'second call':>17}  {'expires in':>10}  claims"
        )
        for source in ManagedIdentitySource:
            credential = await self._credential(source)
            start = time.perf_counter()
            token = await credential.get_token(STORAGE_SCOPE)
            first = time.perf_counter() - start
            start = time.perf_counter()
            again = await credential.get_token(STORAGE_SCOPE)
            second = time.perf_counter() - start
            if again is not token:
                raise DemoError(f"{source.label}: the second call was not served from the cache")
            claims = emulator.verify(token.token, audience="https://storage.azure.com")
            hours = (token.expires_on - time.time()) / 3600
            self.say(
                f"   {source.label:<18} {_report.duration(first):>10} "
                f"{_report.duration(second):>7} cache hit  {hours:>8.1f} h  "
                f"aud={claims['aud']} appid={str(claims['appid'])[:8]}..."
            )
            self._traffic.append((credential, STORAGE_SCOPE))
        self.say(
            "   Each first call is one request to the emulated endpoint (Azure Arc: two, with its "
            "challenge);\n   the second is served from the cache. Tokens are RS256 JWTs, checked "
            "against the emulator's key."
        )

        # Single flight: concurrent callers on a cold cache share one request.
        credential = await self._credential(_S.IMDS)
        before = len(emulator.requests_for(_S.IMDS))
        tokens = await asyncio.gather(
            *(credential.get_token(VAULT_SCOPE) for _ in range(CONCURRENT_CALLERS))
        )
        sent = len(emulator.requests_for(_S.IMDS)) - before
        shared = len({t.token for t in tokens})
        self.say(
            f"   {CONCURRENT_CALLERS} concurrent callers, cold cache: {sent} request to IMDS, "
            f"{shared} token shared by all of them"
        )
        if sent != 1 or shared != 1:
            raise DemoError(f"expected one request and one token, got {sent} and {shared}")

        # Throttling: IMDS answers 429 once; the credential waits as asked and retries.
        emulator.add_fault(
            Fault(
                source=_S.IMDS.value,
                status=429,
                headers={"retry-after-ms": "200"},
                body={"error": "throttled", "error_description": "Too many requests (emulated)"},
            )
        )
        credential = await self._credential(_S.IMDS)
        before = len(emulator.requests_for(_S.IMDS))
        start = time.perf_counter()
        await credential.get_token(MANAGEMENT_SCOPE)
        elapsed = time.perf_counter() - start
        statuses = [r.status for r in emulator.requests_for(_S.IMDS)[before:]]
        self.say(
            f"   IMDS throttled (429, retry-after-ms: 200): answers {statuses}, "
            f"token after {len(statuses)} attempts in {_report.duration(elapsed)}"
        )
        if statuses != [429, 200]:
            raise DemoError(f"expected a 429 then a 200, the endpoint answered {statuses}")

        # A typed error that says what is wrong: a user-assigned identity not assigned here.
        credential = await self._credential(_S.IMDS, client_id=str(uuid.uuid4()))
        try:
            await credential.get_token(MANAGEMENT_SCOPE)
        except CredentialUnavailableError as exc:
            self._wrap(f"An identity not assigned to this VM: {type(exc).__name__}: {exc}")
        else:
            raise DemoError("a token for an identity that is not assigned")

    # -- step 2 ----------------------------------------------------------------------------------

    async def _step_fastapi(self) -> None:
        emulator, telemetry, orders, client = self._need()
        app = build_fastapi_app(
            orders_url=orders.url,
            credential_options={
                "environ": emulator.environ(_S.APP_SERVICE),
                "timeout": CALL_TIMEOUT,
                **telemetry.credential_options(),
            },
            ca_file=emulator.ca_file,
            tracer=telemetry.tracer,
        )
        before = len(emulator.requests_for(_S.APP_SERVICE))
        self._app_url = await self._stack.enter_async_context(serve(app))
        warmed = len(emulator.requests_for(_S.APP_SERVICE)) - before
        self.say(
            f"   uvicorn serves the app at {self._app_url}; at startup ManagedIdentityMiddleware "
            f"warmed\n   a token for {ORDERS_SCOPE} (App Service: {warmed} request)"
        )

        with telemetry.tracer.start_as_current_span(
            "GET /orders to the Orders API, without a token", kind=SpanKind.CLIENT
        ) as span:
            async with client.get(orders.url, headers=traced_headers()) as response:
                span.set_attribute("http.response.status_code", response.status)
                challenge = response.headers.get("WWW-Authenticate", "")
        self.say(f"   Orders API called without a token: {response.status} ({challenge})")
        if response.status != 401:
            raise DemoError(f"the Orders API answered {response.status} without a token")

        accepted = len(orders.accepted)
        for _ in range(2):
            body = await self._call_app("/orders")
            caller = body["caller"]
            self.say(
                f"   GET /orders -> 200, {body['orders']} orders: the app's handler called the "
                f"Orders API, which\n      verified its token (aud={caller['aud']}, "
                f"appid={str(caller['appid'])[:8]}...)"
            )
        if len(orders.accepted) - accepted != 2:
            raise DemoError("the Orders API did not accept both of the app's calls")
        more = len(emulator.requests_for(_S.APP_SERVICE)) - before - warmed
        self.say(f"   token requests made by the two calls: {more} (the warmed token was cached)")
        readiness = await self._call_app("/health/identity")
        scopes = ", ".join(
            f"{s['scope']} expires in {s['expires_in'] / 3600:.1f} h" for s in readiness["scopes"]
        )
        self.say(
            f"   GET /health/identity -> ready={readiness['ready']}, "
            f"source={readiness['source']}, {scopes}"
        )

    async def _call_app(self, path: str) -> dict[str, Any]:
        _, telemetry, _, client = self._need()
        assert self._app_url is not None
        with telemetry.tracer.start_as_current_span(
            f"GET {path} to the FastAPI app", kind=SpanKind.CLIENT
        ) as span:
            async with client.get(self._app_url + path, headers=traced_headers()) as response:
                span.set_attribute("http.response.status_code", response.status)
                if response.status != 200:
                    text = (await response.text())[:300]
                    raise DemoError(f"GET {path} answered {response.status}: {text}")
                body: dict[str, Any] = await response.json()
                return body

    # -- step 3 ----------------------------------------------------------------------------------

    async def _step_azure_core(self) -> None:
        emulator, _, orders, _ = self._need()
        credential = await self._credential(_S.WORKLOAD_IDENTITY)
        # The policies generated Azure SDK clients put in their pipelines, with
        # BearerTokenPolicy where they put azure-core's AsyncBearerTokenCredentialPolicy.
        policies: list[Any] = [
            RequestIdPolicy(),
            HeadersPolicy(),
            UserAgentPolicy(sdk_moniker="mi-credential-demo"),
            AsyncRetryPolicy(retry_total=2),
            BearerTokenPolicy(credential, ORDERS_SCOPE),
            HttpLoggingPolicy(),
        ]
        transport = AioHttpTransport(connection_verify=emulator.ca_file, use_env_settings=False)
        pipeline: AsyncPipelineClient[Any, Any] = AsyncPipelineClient(
            orders.url, policies=policies, transport=transport
        )
        self._pipeline = await self._stack.enter_async_context(pipeline)
        before = len(emulator.requests_for(_S.WORKLOAD_IDENTITY))
        for _ in range(2):
            body = await self._call_pipeline()
            caller = body["caller"]
            self.say(
                f"   GET /orders -> 200, {len(body['orders'])} orders; the Orders API verified "
                f"the token\n      (workload identity: aud={caller['aud']}, "
                f"appid={str(caller['appid'])[:8]}...)"
            )
        sent = len(emulator.requests_for(_S.WORKLOAD_IDENTITY)) - before
        self.say(
            f"   token requests to Microsoft Entra ID: {sent} (BearerTokenPolicy keeps no copy "
            "of its own;\n      the credential's cache served the second call)"
        )
        if sent != 1:
            raise DemoError(f"expected one token request, saw {sent}")

    async def _call_pipeline(self) -> dict[str, Any]:
        _, telemetry, orders, _ = self._need()
        assert self._pipeline is not None
        with telemetry.tracer.start_as_current_span(
            "GET /orders (azure-core pipeline)", kind=SpanKind.CLIENT
        ) as span:
            request = HttpRequest("GET", orders.url, headers=traced_headers())
            response = await self._pipeline.send_request(request)
            span.set_attribute("http.response.status_code", response.status_code)
            if response.status_code != 200:
                text = response.text()[:300]
                raise DemoError(f"GET /orders answered {response.status_code}: {text}")
            body: dict[str, Any] = response.json()
            return body

    # -- report ----------------------------------------------------------------------------------

    def _report(self, telemetry: DemoTelemetry) -> None:
        data = telemetry.collect()
        spans = telemetry.finished_spans()
        self.say("\nAcquisition latency by source (mi_credential.token.acquisition.duration)")
        self.say(
            f"   {'source':<18} {'acquisitions':>12} {'errors':>7} {'mean':>10} "
            f"{'min':>10} {'max':>10}"
        )
        for row in _report.latency_by_source(data):
            self.say(
                f"   {row.source:<18} {row.count:>12} {row.errors:>7} "
                f"{_report.duration(row.mean):>10} {_report.duration(row.min):>10} "
                f"{_report.duration(row.max):>10}"
            )
        cache = _report.cache_summary(data)
        self.say("\nCache (mi_credential.token.requests, mi_credential.token.coalesced_waiters)")
        self.say(
            f"   {cache.calls} get_token calls: {cache.hits + cache.stale} served from the cache "
            f"(hit ratio {cache.hit_ratio:.0%}), {cache.misses} waited for an acquisition,"
        )
        self.say(
            f"   {cache.coalesced} of which joined one already in flight instead of sending a "
            "request of their own"
        )
        self.say(f"\nSpan tree ({len(spans)} spans)")
        for line in _report.render_span_tree(spans):
            self.say(f"   {line}")
        self.say("\nMetric values (counter series at zero left out)")
        for line in _report.render_metrics(data):
            self.say(f"   {line}")

    def _say_otlp(self, telemetry: DemoTelemetry) -> None:
        otlp = telemetry.otlp
        assert otlp is not None
        if self._otlp_ok:
            self.say(
                f"\nOTLP: {otlp.sent_spans} spans and the metrics sent to {otlp.endpoint} "
                f"({otlp.pushes} push{'es' if otlp.pushes != 1 else ''})"
            )
        else:
            self.say(
                f"\nOTLP: sending to {otlp.endpoint} failed ({'; '.join(otlp.failures)}): is "
                "the collector running? (samples/observability: docker compose up -d)"
            )

    # -- hold ------------------------------------------------------------------------------------

    async def _hold(self, telemetry: DemoTelemetry, seconds: float, prometheus_url: str) -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        installed = []
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):  # not on Windows
                loop.add_signal_handler(signum, stop.set)
                installed.append(signum)
        try:
            self.say(
                f"\nHolding for {seconds:g} s (Ctrl-C ends it), with a round of calls every "
                "second. With --hold, IMDS,\nAzure Arc, Cloud Shell and workload identity tokens "
                f"carry refresh_in={HOLD_REFRESH_IN} s, so background refreshes\nshow in the "
                "metrics."
            )
            if self._app_url:
                self.say(f"   FastAPI app  {self._app_url}/orders  {self._app_url}/health/identity")
            if prometheus_url:
                self.say(f"   Prometheus   {prometheus_url}")
            end = loop.time() + seconds
            next_push = loop.time() + PUSH_INTERVAL
            while not stop.is_set() and (remaining := end - loop.time()) > 0:
                with telemetry.tracer.start_as_current_span("hold: a round of calls"):
                    await self._round_of_calls()
                if telemetry.otlp is not None and loop.time() >= next_push:
                    self._otlp_ok = await telemetry.push() and self._otlp_ok
                    next_push = loop.time() + PUSH_INTERVAL
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), min(1.0, remaining))
        finally:
            for signum in installed:
                loop.remove_signal_handler(signum)
        self.say("Stopped holding.")

    async def _round_of_calls(self) -> None:
        calls: list[tuple[str, Callable[[], Awaitable[Any]]]] = [
            (f"get_token ({c.source.value if c.source else '?'})", _bind(c.get_token, s))
            for c, s in self._traffic
        ]
        if self._app_url is not None:
            calls.append(("GET /orders (FastAPI app)", lambda: self._call_app("/orders")))
        if self._pipeline is not None:
            calls.append(("GET /orders (azure-core)", self._call_pipeline))
        for name, call in calls:
            try:
                await asyncio.wait_for(call(), CALL_TIMEOUT)
            except Exception as exc:  # counted and reported; holding goes on
                self._traffic_failures.append(f"{name}: {type(exc).__name__}")


def _bind(method: Callable[[str], Awaitable[Any]], scope: str) -> Callable[[], Awaitable[Any]]:
    return lambda: method(scope)


async def run(args: argparse.Namespace) -> int:
    """The ``demo`` command."""
    options = DemoOptions(
        otlp=args.otlp, prometheus_port=args.prometheus_port, hold=args.hold or 0.0
    )
    return await Demo(options).run()
