"""With opentelemetry-instrumentation-asgi in front, a token acquired in a handler is traced as
a child of the request's SERVER span (the pure ASGI middleware keeps the context)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from mi_credential.emulator import Emulator
from mi_credential_asgi import ManagedIdentityMiddleware

from .conftest import VAULT, assert_no_secret, running

Options = Callable[..., dict[str, Any]]


async def test_acquisition_is_a_child_of_the_server_span(
    emulator: Emulator, credential_options: Options
) -> None:
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])

    async def vault(request: Request) -> PlainTextResponse:
        await request.state.managed_identity.token(VAULT)
        return PlainTextResponse("ok")

    app = Starlette(
        routes=[Route("/vault", vault)],
        middleware=[
            Middleware(
                ManagedIdentityMiddleware,
                credential_options=credential_options(
                    tracer_provider=tracer_provider, meter_provider=meter_provider
                ),
            )
        ],
    )
    traced = OpenTelemetryMiddleware(
        app, tracer_provider=tracer_provider, meter_provider=meter_provider
    )
    async with running(traced) as client:
        assert (await client.get("/vault")).text == "ok"  # a cache miss: one acquisition
        assert (await client.get("/vault")).text == "ok"  # a cache hit: no span
    tracer_provider.shutdown()

    spans = exporter.get_finished_spans()
    servers = [s for s in spans if s.kind is SpanKind.SERVER]
    acquisitions = [s for s in spans if s.name == "ManagedIdentityCredential.get_token"]
    assert len(servers) == 2
    assert len(acquisitions) == 1
    [acquisition] = acquisitions
    first_request = min(servers, key=lambda s: s.start_time or 0)
    assert acquisition.parent is not None
    assert acquisition.parent.span_id == first_request.context.span_id
    assert acquisition.context.trace_id == first_request.context.trace_id
    # The HTTP attempt to the emulator is a child of the acquisition, in the same trace.
    attempts = [s for s in spans if s.kind is SpanKind.CLIENT]
    assert [s.parent.span_id for s in attempts if s.parent] == [acquisition.context.span_id]

    exported = " ".join(
        f"{s.name} {dict(s.attributes or {})} {[dict(e.attributes or {}) for e in s.events]}"
        for s in spans
    )
    assert_no_secret(emulator, exported)
