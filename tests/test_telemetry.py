"""OpenTelemetry: exact spans, parent links, attributes and metric points, with SDK providers
passed explicitly; no secret in any of them; nothing on the cache-hit path; telemetry failures
never break token acquisition."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from mi_credential import ManagedIdentityCredential, TokenRequestError
from mi_credential import ManagedIdentitySource as S
from mi_credential._version import __version__
from mi_credential.emulator import Emulator, Fault
from mi_credential.telemetry import ACQUISITION_BUCKETS, SCHEMA_URL

from .conftest import FakeClock

SCOPE = "https://storage.azure.com/.default"
RESOURCE = "https://storage.azure.com"


class Telemetry:
    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])

    def kwargs(self) -> dict[str, Any]:
        return {"tracer_provider": self.tracer_provider, "meter_provider": self.meter_provider}

    def spans(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def metrics(self) -> dict[str, list[Any]]:
        """Metric name -> data points, from one collection."""
        data = self.reader.get_metrics_data()
        points: dict[str, list[Any]] = {}
        assert data is not None
        for resource_metrics in data.resource_metrics:
            for scope_metrics in resource_metrics.scope_metrics:
                assert scope_metrics.scope.name == "mi_credential"
                assert scope_metrics.scope.version == __version__
                assert scope_metrics.scope.schema_url == SCHEMA_URL
                for metric in scope_metrics.metrics:
                    points.setdefault(metric.name, []).extend(metric.data.data_points)
        return points


@pytest.fixture
def telemetry() -> Iterator[Telemetry]:
    recorded = Telemetry()
    yield recorded
    recorded.tracer_provider.shutdown()
    recorded.meter_provider.shutdown()


def credential_for(emulator: Emulator, clock: FakeClock, telemetry: Telemetry, source=S.APP_SERVICE, **kwargs):
    return ManagedIdentityCredential(
        **emulator.client_options(source), clock=clock, sleep=clock.sleep,
        **telemetry.kwargs(), **kwargs,
    )


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/")[0])


async def test_cold_acquisition_spans(emulator: Emulator, clock: FakeClock, telemetry: Telemetry) -> None:
    tracer = telemetry.tracer_provider.get_tracer("app")
    async with credential_for(emulator, clock, telemetry) as credential:
        with tracer.start_as_current_span("handler") as handler:
            await credential.get_token(SCOPE)
            await credential.get_token(SCOPE)  # a cache hit: no span
            await credential.get_token_info(SCOPE)
    client, acquisition, caller = telemetry.spans()

    assert caller.name == "handler"
    assert acquisition.name == "ManagedIdentityCredential.get_token"
    assert acquisition.kind is SpanKind.INTERNAL
    assert acquisition.parent is not None
    assert acquisition.parent.span_id == handler.get_span_context().span_id
    assert acquisition.context.trace_id == handler.get_span_context().trace_id
    assert dict(acquisition.attributes or {}) == {
        "mi_credential.source": "app_service",
        "mi_credential.identity.kind": "system_assigned",
        "mi_credential.resource": RESOURCE,
        "mi_credential.cache.result": "miss",
        "mi_credential.refresh.reason": "initial",
        "mi_credential.token.origin": "endpoint",
        "mi_credential.attempts": 1,
    }
    assert acquisition.status.status_code is StatusCode.UNSET
    assert acquisition.instrumentation_scope is not None
    assert acquisition.instrumentation_scope.name == "mi_credential"
    assert acquisition.instrumentation_scope.version == __version__
    assert acquisition.instrumentation_scope.schema_url == SCHEMA_URL

    assert client.name == "GET"
    assert client.kind is SpanKind.CLIENT
    assert client.parent is not None and client.parent.span_id == acquisition.context.span_id
    assert dict(client.attributes or {}) == {
        "http.request.method": "GET",
        "server.address": "127.0.0.1",
        "server.port": port_of(emulator.http_url),
        "url.full": f"{emulator.http_url}/msi/token?api-version=2019-08-01"
        "&resource=https%3A%2F%2Fstorage.azure.com",
        "http.response.status_code": 200,
    }
    assert client.status.status_code is StatusCode.UNSET


async def test_retries_and_failure(emulator: Emulator, clock: FakeClock, telemetry: Telemetry) -> None:
    emulator.add_fault(Fault.status_code(503, times=None))
    async with credential_for(emulator, clock, telemetry) as credential:
        with pytest.raises(TokenRequestError):
            await credential.get_token(SCOPE)
    *attempts, acquisition = telemetry.spans()
    assert [s.name for s in attempts] == ["GET"] * 4
    assert [(s.attributes or {}).get("http.request.resend_count") for s in attempts] == [None, 1, 2, 3]
    for span in attempts:
        assert span.attributes["http.response.status_code"] == 503
        assert span.attributes["error.type"] == "503"
        assert span.status.status_code is StatusCode.ERROR
        assert span.parent.span_id == acquisition.context.span_id
    assert acquisition.status.status_code is StatusCode.ERROR
    assert acquisition.attributes["error.type"] == "TokenRequestError"
    assert acquisition.attributes["mi_credential.attempts"] == 4
    assert acquisition.parent is None  # no caller span here: a root

    points = telemetry.metrics()
    (duration,) = points["mi_credential.token.acquisition.duration"]
    assert dict(duration.attributes) == {
        "mi_credential.source": "app_service",
        "mi_credential.identity.kind": "system_assigned",
        "mi_credential.refresh.reason": "initial",
        "mi_credential.token.origin": "endpoint",
        "mi_credential.outcome": "error",
        "error.type": "TokenRequestError",
    }
    assert duration.count == 1
    assert duration.sum == pytest.approx(sum(clock.sleeps))  # the fake clock's back-off
    assert tuple(duration.explicit_bounds) == ACQUISITION_BUCKETS
    (http,) = points["http.client.request.duration"]
    assert http.count == 4
    assert dict(http.attributes) == {
        "http.request.method": "GET",
        "server.address": "127.0.0.1",
        "server.port": port_of(emulator.http_url),
        "http.response.status_code": 503,
        "error.type": "503",
    }


async def test_connection_errors_on_attempt_spans(clock: FakeClock, telemetry: Telemetry) -> None:
    environ = {"AZURE_POD_IDENTITY_AUTHORITY_HOST": "http://127.0.0.1:9"}
    async with ManagedIdentityCredential(environ=environ, clock=clock, sleep=clock.sleep,
                                         **telemetry.kwargs()) as credential:
        with pytest.raises(Exception, match="did not answer"):
            await credential.get_token(SCOPE)
    *attempts, acquisition = telemetry.spans()
    assert len(attempts) == 2  # IMDS, never answered: one quick retry, then the verdict
    assert {s.attributes["error.type"] for s in attempts} == {"ClientConnectorError"}
    assert all("http.response.status_code" not in s.attributes for s in attempts)
    assert acquisition.attributes["error.type"] == "CredentialUnavailableError"


async def test_metric_points(emulator: Emulator, clock: FakeClock, telemetry: Telemetry) -> None:
    async with credential_for(emulator, clock, telemetry, source=S.IMDS) as credential:
        with emulator.hold():  # the first acquisition is in flight while the others arrive
            callers = asyncio.gather(*(credential.get_token(SCOPE) for _ in range(10)))
            await emulator.wait_for_requests(1)
        await callers  # 1 miss, 9 join
        await credential.get_token(SCOPE)
        await credential.get_token_info(SCOPE)  # 2 hits
        clock.advance(43200 + 1)  # past refresh_on
        await credential.get_token(SCOPE)  # stale: served, refreshed behind
        await credential._cache.settle()
        clock.advance(100)
        points = telemetry.metrics()

    common = {"mi_credential.source": "imds", "mi_credential.identity.kind": "system_assigned"}
    requests = {
        (p.attributes["mi_credential.cache.result"], p.attributes["mi_credential.outcome"]): p.value
        for p in points["mi_credential.token.requests"]
    }
    assert requests == {("hit", "success"): 2, ("stale", "success"): 1,
                        ("miss", "success"): 10, ("miss", "error"): 0, ("miss", "cancelled"): 0}
    assert all(dict(p.attributes).items() >= common.items() for p in points["mi_credential.token.requests"])
    refreshes = {
        (p.attributes["mi_credential.refresh.reason"], p.attributes["mi_credential.outcome"]): p.value
        for p in points["mi_credential.token.refreshes"]
    }
    assert refreshes == {("initial", "success"): 1, ("proactive", "success"): 1}
    (coalesced,) = points["mi_credential.token.coalesced_waiters"]
    assert (coalesced.value, dict(coalesced.attributes)) == (9, common)
    (expiry,) = points["mi_credential.token.time_to_expiry"]
    assert dict(expiry.attributes) == {**common, "mi_credential.resource": RESOURCE}
    assert expiry.value == 86400 - 100  # refreshed at the advance, read 100 s later
    durations = points["mi_credential.token.acquisition.duration"]
    assert sum(p.count for p in durations) == 2
    http = points["http.client.request.duration"]
    assert sum(p.count for p in http) == 2
    assert {p.attributes["http.response.status_code"] for p in http} == {200}


async def test_miss_counts_only_grow_and_a_cancelled_caller_is_no_error(
    emulator: Emulator, clock: FakeClock, telemetry: Telemetry
) -> None:
    """A miss is counted when its caller has its answer: a count never drops (a counter that
    did would read as a reset), and a caller cancelled while it waits is not a failure."""

    def misses() -> dict[str, int]:
        return {
            p.attributes["mi_credential.outcome"]: p.value
            for p in telemetry.metrics()["mi_credential.token.requests"]
            if p.attributes["mi_credential.cache.result"] == "miss"
        }

    emulator.add_fault(Fault.status_code(400, times=1))
    async with credential_for(emulator, clock, telemetry) as credential:
        with emulator.hold():
            leaving = asyncio.ensure_future(credential.get_token(SCOPE))
            staying = asyncio.ensure_future(credential.get_token(SCOPE))
            await emulator.wait_for_requests(1)
            assert misses() == {"success": 0, "error": 0, "cancelled": 0}  # no answer yet
            leaving.cancel()
            with pytest.raises(asyncio.CancelledError):
                await leaving
            assert misses() == {"success": 0, "error": 0, "cancelled": 1}
        with pytest.raises(TokenRequestError):
            await staying
        assert misses() == {"success": 0, "error": 1, "cancelled": 1}
        await credential.get_token(SCOPE)
        assert misses() == {"success": 1, "error": 1, "cancelled": 1}


async def test_counts_of_several_credentials_add_up(
    emulator: Emulator, clock: FakeClock, telemetry: Telemetry
) -> None:
    credentials = [credential_for(emulator, clock, telemetry) for _ in range(3)]
    for credential in credentials:
        await credential.get_token(SCOPE)
        await credential.get_token(SCOPE)
        await credential.close()
    del credentials
    requests = {
        p.attributes["mi_credential.cache.result"] + "/" + p.attributes["mi_credential.outcome"]: p.value
        for p in telemetry.metrics()["mi_credential.token.requests"]
    }
    assert requests["hit/success"] == 3
    assert requests["miss/success"] == 3


async def test_a_cache_hit_makes_no_opentelemetry_call(
    emulator: Emulator, clock: FakeClock, telemetry: Telemetry, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    from opentelemetry import context as otel_context
    from opentelemetry.sdk.metrics._internal import instrument
    from opentelemetry.sdk.trace import Tracer

    def spy(owner: Any, name: str) -> None:
        original = getattr(owner, name)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            calls.append(name)
            return original(*args, **kwargs)

        monkeypatch.setattr(owner, name, wrapper)

    async with credential_for(emulator, clock, telemetry) as credential:
        await credential.get_token(SCOPE)
        spy(Tracer, "start_span")
        spy(instrument._Counter, "add")
        spy(instrument._Histogram, "record")
        spy(otel_context, "attach")
        for _ in range(100):
            await credential.get_token(SCOPE)
            await credential.get_token_info(SCOPE)
        assert calls == []
        await credential.get_token("https://vault.azure.net/.default")  # a miss does call
        assert "start_span" in calls and "record" in calls


async def test_with_aiohttp_instrumentation_no_span_is_doubled(
    emulator: Emulator, clock: FakeClock, telemetry: Telemetry
) -> None:
    from opentelemetry.instrumentation.aiohttp_client import AioHttpClientInstrumentor

    instrumentor = AioHttpClientInstrumentor()
    instrumentor.instrument(tracer_provider=telemetry.tracer_provider)
    try:
        emulator.add_fault(Fault.status_code(500, times=1))
        async with credential_for(emulator, clock, telemetry) as credential:
            await credential.get_token(SCOPE)
            # The application's own aiohttp calls are still instrumented.
            async with aiohttp.ClientSession() as session, session.get(
                emulator.http_url + "/emulator/jwks"
            ) as response:
                await response.read()
    finally:
        instrumentor.uninstrument()
    spans = telemetry.spans()
    ours = [s for s in spans if s.instrumentation_scope.name == "mi_credential"]
    theirs = [s for s in spans if s.instrumentation_scope.name != "mi_credential"]
    assert [(s.name, s.kind) for s in ours] == [
        ("GET", SpanKind.CLIENT), ("GET", SpanKind.CLIENT),
        ("ManagedIdentityCredential.get_token", SpanKind.INTERNAL),
    ]
    assert len(theirs) == 1  # only the application's request, none of ours doubled
    attributes = theirs[0].attributes
    # the instrumentation's (old or stable) semantic conventions
    assert (attributes.get("url.full") or attributes.get("http.url")).endswith("/emulator/jwks")
    assert_no_secret_in_spans(spans, emulator)


def assert_no_secret_in_spans(spans: list[ReadableSpan], emulator: Emulator) -> None:
    texts = []
    for span in spans:
        texts.append(span.to_json())
    for secret in emulator.secrets():
        for text in texts:
            assert secret not in text


@pytest.mark.parametrize("source", list(S))
async def test_no_secret_in_any_span_or_metric(
    emulator: Emulator, clock: FakeClock, telemetry: Telemetry, source: S
) -> None:
    emulator.add_fault(Fault.json_body({"error": "x", "error_description": emulator.secret}, status=500))
    async with credential_for(emulator, clock, telemetry, source=source) as credential:
        await credential.get_token(SCOPE)
        clock.advance(43201)
        await credential.get_token(SCOPE)
        await credential._cache.settle()
    assert_no_secret_in_spans(telemetry.spans(), emulator)
    metrics_json = telemetry.reader.get_metrics_data().to_json()
    for secret in emulator.secrets():
        assert secret not in metrics_json


class FailingExporter(SpanExporter):
    def export(self, spans: Any) -> SpanExportResult:
        raise RuntimeError("exporter down")

    def shutdown(self) -> None:
        pass


class BrokenTracerProvider(trace.TracerProvider):
    def get_tracer(self, *args: Any, **kwargs: Any) -> trace.Tracer:
        raise RuntimeError("broken provider")


async def test_telemetry_failures_never_break_acquisition(
    emulator: Emulator, clock: FakeClock
) -> None:
    raising = TracerProvider()
    raising.add_span_processor(SimpleSpanProcessor(FailingExporter()))
    for tracer_provider in (raising, BrokenTracerProvider(), trace.NoOpTracerProvider()):
        async with ManagedIdentityCredential(
            environ=emulator.environ(S.IMDS), clock=clock, tracer_provider=tracer_provider
        ) as credential:
            assert emulator.verify((await credential.get_token(SCOPE)).token)


class AdviceFreeMeter:
    """A meter as opentelemetry-api before 1.30 has it: ``create_histogram`` takes no bucket
    advice (``explicit_bucket_boundaries_advisory``)."""

    def __init__(self, meter: Any) -> None:
        self._meter = meter

    def create_histogram(self, name: str, unit: str = "", description: str = "") -> Any:
        return self._meter.create_histogram(name, unit=unit, description=description)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._meter, name)


class AdviceFreeMeterProvider(metrics.MeterProvider):
    def __init__(self, provider: MeterProvider) -> None:
        self._provider = provider

    def get_meter(self, name: str, version: str | None = None, schema_url: str | None = None,
                  attributes: Any = None) -> Any:
        return AdviceFreeMeter(self._provider.get_meter(name, version, schema_url))


async def test_histograms_without_bucket_advice(
    emulator: Emulator, clock: FakeClock, telemetry: Telemetry, caplog: pytest.LogCaptureFixture
) -> None:
    """An API that takes no bucket advice still gets both histograms (with the SDK's default
    buckets, which a View can set): metrics are not turned off, and the token comes."""
    provider = AdviceFreeMeterProvider(telemetry.meter_provider)
    async with ManagedIdentityCredential(
        **emulator.client_options(S.APP_SERVICE), clock=clock, sleep=clock.sleep,
        tracer_provider=telemetry.tracer_provider, meter_provider=provider,
    ) as credential:
        assert emulator.verify((await credential.get_token(SCOPE)).token)
    assert not [r for r in caplog.records if "metrics are disabled" in r.getMessage()]
    points = telemetry.metrics()
    (duration,) = points["mi_credential.token.acquisition.duration"]
    assert duration.count == 1
    assert tuple(duration.explicit_bounds) != ACQUISITION_BUCKETS  # no advice was taken
    (http,) = points["http.client.request.duration"]
    assert http.count == 1
