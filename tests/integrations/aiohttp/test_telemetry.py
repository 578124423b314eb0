"""The credential's acquisition span nests under the aiohttp client span of the request it
signs, and no span carries the token."""

from __future__ import annotations

from collections.abc import Iterator

import aiohttp
import opentelemetry.instrumentation.aiohttp_client as aiohttp_instrumentation
import pytest
from opentelemetry.instrumentation.aiohttp_client import AioHttpClientInstrumentor
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from mi_credential.emulator import Emulator
from mi_credential_aiohttp import create_session

from ...conftest import CredentialFactory
from .conftest import API_SCOPE, LoopbackResolver, ProtectedApi, Tls

AIOHTTP_SCOPE = "opentelemetry.instrumentation.aiohttp_client"
ACQUISITION = "ManagedIdentityCredential.get_token"
#: Whether this release of the instrumentation records request headers at all (the releases of
#: the API floor's train, before 0.61b0, record none; the token scan below holds either way).
CAPTURES_HEADERS = "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_CLIENT_REQUEST" in (
    aiohttp_instrumentation.__doc__ or ""
)


@pytest.fixture
def traced(
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    """aiohttp client instrumentation on an SDK provider, capturing every request header (the
    worst case for a secret header), removed after the test."""
    monkeypatch.setenv("OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_CLIENT_REQUEST", ".*")
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    instrumentor = AioHttpClientInstrumentor()
    instrumentor.instrument(tracer_provider=provider)
    try:
        yield provider, exporter
    finally:
        instrumentor.uninstrument()
        provider.shutdown()


def _texts(span: ReadableSpan) -> list[str]:
    texts = [span.name, *(str(v) for v in (span.attributes or {}).values())]
    for event in span.events:
        texts += [event.name, *(str(v) for v in (event.attributes or {}).values())]
    return texts


async def test_the_acquisition_span_is_a_child_of_the_aiohttp_client_span(
    emulator: Emulator,
    make_credential: CredentialFactory,
    api: ProtectedApi,
    tls: Tls,
    traced: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, exporter = traced
    credential = make_credential("app_service", tracer_provider=provider)
    async with create_session(
        credential,
        {api.origin(): API_SCOPE},
        connector=aiohttp.TCPConnector(ssl=tls.client, resolver=LoopbackResolver()),
    ) as session:
        for _ in range(2):  # a cold credential, then a cached token
            async with session.get(api.url(), headers={"X-Trace-Me": "yes"}) as response:
                assert response.status == 200

    spans = exporter.get_finished_spans()
    client_spans = sorted(
        (
            s
            for s in spans
            if s.instrumentation_scope and s.instrumentation_scope.name == AIOHTTP_SCOPE
        ),
        key=lambda s: s.start_time or 0,
    )
    acquisitions = [s for s in spans if s.name == ACQUISITION]
    # One aiohttp span per API request: the credential's own token request is not doubled.
    assert len(client_spans) == 2
    assert all(s.kind is SpanKind.CLIENT for s in client_spans)
    # One acquisition: the cache hit of the second request records no span.
    [acquisition] = acquisitions
    first = client_spans[0]
    assert acquisition.parent is not None
    assert acquisition.parent.span_id == first.context.span_id
    assert acquisition.context.trace_id == first.context.trace_id
    # The credential's HTTP attempt is inside the acquisition, in the same trace.
    attempts = [s for s in spans if s.parent and s.parent.span_id == acquisition.context.span_id]
    assert attempts and all(s.context.trace_id == first.context.trace_id for s in attempts)

    # Header capture is on (it recorded the caller's header), yet the token was never seen: the
    # instrumentation reads the headers before the middleware adds Authorization.
    for span in client_spans:
        keys = {k.lower() for k in span.attributes or {}}
        if CAPTURES_HEADERS:
            assert any("x_trace_me" in k or "x-trace-me" in k for k in keys), keys
        assert not any("authorization" in k for k in keys), keys
    tokens = [s.token for s in api.seen if s.token]
    assert len(tokens) == 2
    for span in spans:
        for text in _texts(span):
            assert tokens[0] not in text
            assert emulator.secret not in text
