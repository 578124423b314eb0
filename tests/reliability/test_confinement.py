"""Token confinement across the integrations: the tokens the emulator issues (the canaries) never
reach an origin that was not configured, plain http, a redirect target, a log record, a span, a
metric or an error message."""

from __future__ import annotations

import os
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import httpx
import pytest
from aiohttp import web
from azure.core.exceptions import ClientAuthenticationError, ServiceRequestError
from azure.core.pipeline import AsyncPipeline
from azure.core.pipeline.policies import AsyncBearerTokenCredentialPolicy, AsyncRedirectPolicy
from azure.core.pipeline.transport import AioHttpTransport
from azure.core.rest import HttpRequest
from fastapi import FastAPI, Request
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from mi_credential import ManagedIdentityCredential
from mi_credential import ManagedIdentitySource as S
from mi_credential.emulator import Emulator, _crypto
from mi_credential_aiohttp import InsecureTransportError, create_session
from mi_credential_asgi import ManagedIdentityMiddleware, add_credential_error_handler
from mi_credential_azure_core import BearerTokenPolicy

from ..conftest import FakeClock

pytestmark = pytest.mark.reliability

SCOPE = "https://storage.azure.com/.default"


@dataclass
class Servers:
    api: str  # https, the configured origin: verifies tokens, redirects on request
    api_http: str  # the same application's plain-http listener
    tripwire: str  # http, never configured: records everything that reaches it
    tripwire_https: str  # the same, over https
    received: list[dict[str, str]] = field(default_factory=list)


async def _start(app: web.Application, context: ssl.SSLContext | None) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    port: int = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, port


@pytest.fixture
async def servers(emulator: Emulator, tmp_path) -> AsyncIterator[Servers]:
    received: list[dict[str, str]] = []

    async def record(request: web.Request) -> web.Response:
        received.append({**request.headers, "__url__": str(request.url),
                         "__body__": (await request.read()).decode(errors="replace")})
        return web.json_response({"ok": True})

    tripwire = web.Application()
    tripwire.router.add_route("*", "/{tail:.*}", record)
    trip_runner, trip_port = await _start(tripwire, None)
    trip_url = f"http://127.0.0.1:{trip_port}"

    async def protected(request: web.Request) -> web.StreamResponse:
        target = request.query.get("to")
        if target:
            raise web.HTTPFound(target)
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme != "Bearer":
            return web.json_response({"error": "no token"}, status=401)
        emulator.verify(token, audience="https://storage.azure.com")
        return web.json_response({"ok": True})

    api = web.Application()
    api.router.add_route("*", "/{tail:.*}", protected)
    tls = _crypto.tls_material()
    (tmp_path / "cert.pem").write_bytes(tls.cert_pem)
    (tmp_path / "key.pem").write_bytes(tls.key_pem)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    api_runner, api_port = await _start(api, context)
    http_runner, http_port = await _start(api, None)
    trip_tls_runner, trip_tls_port = await _start(tripwire, context)
    yield Servers(f"https://127.0.0.1:{api_port}", f"http://127.0.0.1:{http_port}", trip_url,
                  f"https://127.0.0.1:{trip_tls_port}", received)
    for runner in (api_runner, http_runner, trip_runner, trip_tls_runner):
        await runner.cleanup()


@pytest.fixture
def telemetry() -> tuple[TracerProvider, InMemorySpanExporter, MeterProvider, InMemoryMetricReader]:
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    return tracer_provider, exporter, MeterProvider(metric_readers=[reader]), reader


@pytest.fixture
async def credential(
    emulator: Emulator, clock: FakeClock, telemetry: Any
) -> AsyncIterator[ManagedIdentityCredential]:
    tracer_provider, _, meter_provider, _ = telemetry
    async with ManagedIdentityCredential(
        environ=emulator.environ(S.APP_SERVICE), clock=clock, tracer_provider=tracer_provider,
        meter_provider=meter_provider,
    ) as created:
        yield created


def assert_confined(emulator: Emulator, servers: Servers, telemetry: Any, *texts: str) -> None:
    """No issued token, identity header or key in the tripwire, spans, metrics or texts."""
    _, exporter, _, reader = telemetry
    secrets = emulator.secrets()
    assert emulator.issued_tokens, "a token was issued: the check has something to look for"
    haystacks = [repr(r) for r in servers.received]
    haystacks += [span.to_json() for span in exporter.get_finished_spans()]
    data = reader.get_metrics_data()
    haystacks.append(data.to_json() if data is not None else "")
    haystacks += texts
    for secret in secrets:
        for haystack in haystacks:
            assert secret not in haystack


def verify_context(emulator: Emulator) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=emulator.ca_file)


async def test_aiohttp_middleware(
    emulator: Emulator, servers: Servers, credential: ManagedIdentityCredential, telemetry: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from opentelemetry.instrumentation.aiohttp_client import AioHttpClientInstrumentor

    # The HTTP instrumentation captures every request header it sees.
    monkeypatch.setenv("OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_CLIENT_REQUEST", ".*")
    instrumentor = AioHttpClientInstrumentor()
    instrumentor.instrument(tracer_provider=telemetry[0])
    api_origin = servers.api.removeprefix("https://")
    try:
        async with create_session(
            credential, {api_origin: SCOPE},
            connector=aiohttp.TCPConnector(ssl=verify_context(emulator)),
        ) as session:
            async with session.get(servers.api + "/ok") as response:
                assert response.status == 200  # the configured origin got a valid token
            async with session.get(servers.tripwire + "/not-configured") as response:
                assert response.status == 200
            async with session.get(servers.api + "/hop", params={"to": servers.tripwire + "/r"}) as response:
                assert response.status == 200  # followed to another origin
            with pytest.raises(InsecureTransportError) as insecure:
                await session.get(servers.api.replace("https://", "http://") + "/plain")
            with pytest.raises(InsecureTransportError) as downgrade:
                await session.get(servers.api + "/hop",
                                  params={"to": servers.api_http.replace(
                                      servers.api_http.rsplit(":", 1)[1],
                                      servers.api.rsplit(":", 1)[1]) + "/down"})
    finally:
        instrumentor.uninstrument()
    assert [r["__url__"].rsplit("/", 1)[1] for r in servers.received] == ["not-configured", "r"]
    assert all("Authorization" not in r for r in servers.received)
    assert_confined(emulator, servers, telemetry, str(insecure.value), repr(insecure.value),
                    str(downgrade.value))


async def test_azure_core_policy(
    emulator: Emulator, servers: Servers, credential: ManagedIdentityCredential, telemetry: Any
) -> None:
    async def pipeline_for(policy: Any) -> AsyncPipeline[Any, Any]:
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=verify_context(emulator)))
        transport = AioHttpTransport(session=session, session_owner=True)
        # No SensitiveHeaderCleanupPolicy: the policy itself must not sign a cross-domain hop.
        return AsyncPipeline(transport, policies=[AsyncRedirectPolicy(), policy])

    async with await pipeline_for(BearerTokenPolicy(credential, SCOPE)) as pipeline:
        ok = await pipeline.run(HttpRequest("GET", servers.api + "/ok"))
        assert ok.http_response.status_code == 200
        hop = await pipeline.run(HttpRequest("GET", servers.api + "/hop",
                                             params={"to": servers.tripwire_https + "/azure-core"}))
        assert hop.http_response.status_code == 200  # followed, without the token
        with pytest.raises(ServiceRequestError) as insecure:
            await pipeline.run(HttpRequest("GET", servers.api_http + "/plain"))
        with pytest.raises(ServiceRequestError) as downgrade:  # as azure-core's policy does
            await pipeline.run(HttpRequest("GET", servers.api + "/hop",
                                           params={"to": servers.tripwire + "/downgrade"}))
    assert [r["__url__"].rsplit("/", 1)[1] for r in servers.received] == ["azure-core"]
    assert "Authorization" not in servers.received[0]
    assert_confined(emulator, servers, telemetry, str(insecure.value), str(downgrade.value))

    # The control: azure-core's own policy, in the same pipeline, does send the token there.
    async with await pipeline_for(AsyncBearerTokenCredentialPolicy(credential, SCOPE)) as pipeline:
        await pipeline.run(HttpRequest("GET", servers.api + "/hop",
                                       params={"to": servers.tripwire_https + "/control"}))
    assert "Authorization" in servers.received[-1]
    servers.received.pop()  # expected in the control; the confinement check covers ours only


async def test_asgi_middleware_error_responses(
    emulator: Emulator, servers: Servers, credential: ManagedIdentityCredential, telemetry: Any
) -> None:
    app = FastAPI()
    app.add_middleware(ManagedIdentityMiddleware, credential=credential)
    add_credential_error_handler(app)

    @app.get("/leak")
    async def leak(request: Request) -> dict[str, str]:
        token = await request.state.managed_identity.token(SCOPE)
        raise ClientAuthenticationError(message=f"downstream refused {token}")

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://app") as client:
        response = await client.get("/leak")
    assert response.status_code == 503
    assert response.headers["content-type"] == "application/problem+json"
    assert_confined(emulator, servers, telemetry, response.text)


def test_no_secret_in_the_environment_of_this_process() -> None:
    # Sanity for the scans above: the test process itself holds no emulator secret in its
    # environment that a subprocess could print.
    assert not any(name.startswith(("IDENTITY_", "MSI_")) for name in os.environ)
