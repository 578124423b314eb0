"""The demo's OpenTelemetry SDK set-up: providers passed explicitly to every credential and
integration (the global providers are left alone), in-memory recording for the printed report,
and optionally a Prometheus exposition and an OTLP/HTTP export to a collector.

Metrics are collected on the event loop's thread only (the report, each Prometheus scrape and
each OTLP push), and OTLP requests are sent from a worker thread, so no SDK background thread
reads the credentials while the loop changes them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from aiohttp import web
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    InMemoryMetricReader,
    MetricExporter,
    MetricExportResult,
    MetricReader,
    MetricsData,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Tracer

from mi_credential import __version__

SERVICE_NAME = "mi-credential-demo"
#: Seconds an OTLP push may take, retries included, before it counts as failed.
OTLP_TIMEOUT = 5.0


class MissingDependencyError(Exception):
    """An option needs a package that is not installed; the message says which."""


class OtlpSink:
    """Sends the demo's spans and metrics to an OpenTelemetry Collector over OTLP/HTTP
    (``<endpoint>/v1/traces`` and ``<endpoint>/v1/metrics``).

    Raises:
        MissingDependencyError: opentelemetry-exporter-otlp-proto-http is not installed.
    """

    def __init__(self, endpoint: str) -> None:
        try:
            from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
                OTLPMetricExporter,
            )
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError as exc:
            raise MissingDependencyError(
                f"--otlp needs opentelemetry-exporter-otlp-proto-http ({exc.name} is missing): "
                'pip install "mi-credential[demo]"'
            ) from exc
        self.endpoint = endpoint
        self._spans: SpanExporter = OTLPSpanExporter(
            endpoint=f"{endpoint}/v1/traces", timeout=OTLP_TIMEOUT
        )
        self._metrics: MetricExporter = OTLPMetricExporter(
            endpoint=f"{endpoint}/v1/metrics", timeout=OTLP_TIMEOUT
        )
        self.sent_spans = 0
        self.pushes = 0
        self.failures: list[str] = []

    async def push(self, spans: Sequence[ReadableSpan], metrics: MetricsData | None) -> bool:
        """Send ``spans`` and a collection of metrics. Returns whether both were accepted."""
        return await asyncio.to_thread(self._push, list(spans), metrics)

    def _push(self, spans: list[ReadableSpan], metrics: MetricsData | None) -> bool:
        ok = True
        if spans:
            result = self._spans.export(spans)
            if result is not SpanExportResult.SUCCESS:
                # The metrics would meet the same fate: do not wait for them too.
                self.failures.append(f"{len(spans)} spans not accepted, metrics not sent")
                self.pushes += 1
                return False
            self.sent_spans += len(spans)
        if metrics is not None:
            outcome = self._metrics.export(metrics, timeout_millis=OTLP_TIMEOUT * 1000)
            if outcome is not MetricExportResult.SUCCESS:
                ok = False
                self.failures.append("metrics not accepted")
        self.pushes += 1
        return ok

    def close(self) -> None:
        self._spans.shutdown()
        self._metrics.shutdown()


class PrometheusEndpoint:
    """``GET /metrics`` on 127.0.0.1: the Prometheus exposition of the demo's metrics, served
    from the event loop (each scrape collects on the loop's thread).

    Raises:
        MissingDependencyError: opentelemetry-exporter-prometheus is not installed.
    """

    def __init__(self, port: int) -> None:
        try:
            from opentelemetry.exporter.prometheus import PrometheusMetricReader
            from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
        except ImportError as exc:
            raise MissingDependencyError(
                f"--prometheus-port needs opentelemetry-exporter-prometheus ({exc.name} is "
                'missing): pip install "mi-credential[demo]"'
            ) from exc
        self.reader: MetricReader = PrometheusMetricReader()
        self._port = port

        def render() -> bytes:
            return generate_latest(REGISTRY)

        self._render = render
        self._content_type = CONTENT_TYPE_LATEST
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> str:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self._port).start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}/metrics"
        return self.url

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _metrics(self, request: web.Request) -> web.Response:
        response = web.Response(body=self._render())
        response.headers["Content-Type"] = self._content_type
        return response


class DemoTelemetry:
    """Tracer and meter providers for the demo, recording in memory.

    Args:
        prometheus_port: Serve a Prometheus exposition on this port (0: any free one).
        otlp: Base URL of an OTLP/HTTP receiver to send spans and metrics to.

    Raises:
        MissingDependencyError: An exporter the options need is not installed.
    """

    def __init__(self, *, prometheus_port: int | None = None, otlp: str | None = None) -> None:
        resource = Resource.create({"service.name": SERVICE_NAME})
        self.spans = InMemorySpanExporter()
        self.tracer_provider = TracerProvider(resource=resource)
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.spans))
        self.reader = InMemoryMetricReader()
        readers: list[MetricReader] = [self.reader]
        self.prometheus = None if prometheus_port is None else PrometheusEndpoint(prometheus_port)
        if self.prometheus is not None:
            readers.append(self.prometheus.reader)
        self.otlp = OtlpSink(otlp) if otlp else None
        self.meter_provider = MeterProvider(metric_readers=readers, resource=resource)
        self.tracer: Tracer = self.tracer_provider.get_tracer("mi_credential.demo", __version__)
        self._pushed = 0

    def credential_options(self) -> dict[str, Any]:
        """The keywords that make a credential record with these providers."""
        return {"tracer_provider": self.tracer_provider, "meter_provider": self.meter_provider}

    def finished_spans(self) -> tuple[ReadableSpan, ...]:
        return self.spans.get_finished_spans()

    def collect(self) -> MetricsData | None:
        """Collect the metrics now (cumulative since the start)."""
        return self.reader.get_metrics_data()

    async def push(self) -> bool:
        """Send the spans finished since the last push, and the metrics, over OTLP."""
        if self.otlp is None:
            return True
        spans = self.finished_spans()
        new, self._pushed = spans[self._pushed :], len(spans)
        return await self.otlp.push(new, self.collect())

    def shutdown(self) -> None:
        if self.otlp is not None:
            self.otlp.close()
        self.meter_provider.shutdown()
        self.tracer_provider.shutdown()
