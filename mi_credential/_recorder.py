"""Recording acquisitions and their HTTP attempts as spans and metrics. The names are
:mod:`mi_credential.telemetry`'s, the instruments ``_instruments``'. Nothing recorded carries a
token, a secret header, key-file content or JWT claims; every call into OpenTelemetry is
guarded, so telemetry never fails an acquisition.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from time import monotonic as _monotonic
from typing import Any
from urllib.parse import urlsplit

from opentelemetry import context as otel_context
from opentelemetry import metrics, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from ._instruments import (
    SUPPRESS_INSTRUMENTATION_KEYS,
    Instruments,
    instruments_for,
    tracer_for,
)
from .telemetry import (
    ACQUISITION_SPAN,
    ATTEMPTS,
    CACHE_RESULT,
    ERROR_TYPE,
    HTTP_REQUEST_METHOD,
    HTTP_REQUEST_RESEND_COUNT,
    HTTP_RESPONSE_STATUS_CODE,
    ORIGIN_ENDPOINT,
    OUTCOME,
    REFRESH_REASON,
    RESOURCE,
    SERVER_ADDRESS,
    SERVER_PORT,
    TOKEN_ORIGIN,
    URL_FULL,
)

_logger = logging.getLogger(__name__)


class Acquisition:
    """One acquisition in progress: its span, the context its attempts are children of, when it
    started, and how many attempts it made."""

    __slots__ = ("attempts", "attributes", "context", "span", "start")

    def __init__(
        self, span: trace.Span, context: Any, attributes: dict[str, Any], start: float
    ) -> None:
        self.span = span
        self.context = context
        self.attributes = attributes
        self.start = start
        self.attempts = 0


class Attempt:
    """One HTTP attempt in progress: its span, metric attributes, start, context token."""

    __slots__ = ("attributes", "span", "start", "token")

    def __init__(
        self, span: trace.Span, attributes: dict[str, Any], start: float, token: Any
    ) -> None:
        self.span = span
        self.attributes = attributes
        self.start = start
        self.token = token


class Recorder:
    """Records the spans and metrics of acquisitions and their HTTP attempts.

    Recording is explicit start/finish calls rather than context managers: this is the cold
    path of every acquisition, and generator-based context managers cost more than the
    recording itself. Every call is guarded: telemetry never fails an acquisition. Holds no
    per-credential state: credentials that record alike share one (:meth:`get`).

    Args:
        tracer: The tracer spans come from.
        instruments: The meter instruments.
        attributes: Attributes common to everything recorded.
        monotonic: The clock durations are measured with.
    """

    __slots__ = ("_instruments", "_monotonic", "_tracer", "attributes", "stats")

    @classmethod
    def get(
        cls,
        *,
        tracer_provider: trace.TracerProvider | None,
        meter_provider: metrics.MeterProvider | None,
        attributes: dict[str, str],
        monotonic: Callable[[], float],
    ) -> Recorder:
        """The recorder for a credential: shared by every credential with the global providers,
        the default clock and the same attributes; a new one otherwise."""
        try:
            tracer = tracer_for(tracer_provider)
        except Exception:
            _logger.warning("OpenTelemetry tracing is disabled: the tracer provider failed")
            tracer = trace.NoOpTracer()
        try:
            instruments = instruments_for(meter_provider)
        except Exception:
            _logger.warning("OpenTelemetry metrics are disabled: the meter provider failed")
            instruments = Instruments(metrics.NoOpMeterProvider())
        if tracer_provider is not None or meter_provider is not None or monotonic is not _monotonic:
            return cls(tracer, instruments, attributes, monotonic)
        key = tuple(sorted(attributes.items()))
        recorder = instruments.recorders.get(key)
        if recorder is None:
            recorder = instruments.recorders[key] = cls(tracer, instruments, attributes, monotonic)
        return recorder

    def __init__(
        self,
        tracer: trace.Tracer,
        instruments: Instruments,
        attributes: dict[str, str],
        monotonic: Callable[[], float],
    ) -> None:
        self._tracer = tracer
        self._instruments = instruments
        self._monotonic = monotonic
        self.attributes = attributes
        self.stats = instruments.stats_for(attributes)

    def start_acquisition(self, resource: str, reason: str, cache_result: str) -> Acquisition:
        """Start the INTERNAL span of an acquisition, a child of the caller's current span."""
        attributes = {
            **self.attributes,
            RESOURCE: resource,
            CACHE_RESULT: cache_result,
            REFRESH_REASON: reason,
            TOKEN_ORIGIN: ORIGIN_ENDPOINT,
        }
        start = self._monotonic()
        try:
            span = self._tracer.start_span(
                ACQUISITION_SPAN, kind=SpanKind.INTERNAL, attributes=attributes
            )
            context = trace.set_span_in_context(span)
        except Exception:
            _logger.debug("could not start a span", exc_info=True)
            span, context = trace.INVALID_SPAN, None
        return Acquisition(span, context, attributes, start)

    def note_shared(self, record: Acquisition, origin: str, waited: bool) -> None:
        """The acquisition went through the shared cache: where its token came from, and
        whether it waited for another process's lock."""
        try:
            if origin != ORIGIN_ENDPOINT:
                shared = {CACHE_RESULT: "shared", TOKEN_ORIGIN: origin}
                record.attributes.update(shared)
                record.span.set_attributes(shared)
            if waited:
                self._instruments.lock_waits.add(1, self.attributes)
        except Exception:
            _logger.debug("could not record a shared cache outcome", exc_info=True)

    def finish_acquisition(self, record: Acquisition, error: BaseException | None) -> None:
        """End the acquisition's span; record its duration and outcome."""
        try:
            span = record.span
            span.set_attribute(ATTEMPTS, record.attempts)
            metric_attributes = {
                k: v for k, v in record.attributes.items() if k not in (RESOURCE, CACHE_RESULT)
            }
            if error is not None:
                error_type = type(error).__name__
                span.set_attribute(ERROR_TYPE, error_type)
                span.set_status(Status(StatusCode.ERROR, error_type))
                metric_attributes[ERROR_TYPE] = error_type
            metric_attributes[OUTCOME] = "success" if error is None else "error"
            span.end()
            self._instruments.acquisition_duration.record(
                max(0.0, self._monotonic() - record.start), metric_attributes
            )
            self._instruments.refreshes.add(1, metric_attributes)
        except Exception:
            _logger.debug("could not record an acquisition", exc_info=True)

    def start_attempt(
        self, record: Acquisition, method: str, url: str, resend_count: int
    ) -> Attempt:
        """Start the CLIENT span of an HTTP attempt (a child of the acquisition's) and suppress
        HTTP auto-instrumentation until :meth:`finish_attempt`."""
        address, port, url_full = _url_facts(url)
        attributes: dict[str, Any] = {
            HTTP_REQUEST_METHOD: method,
            SERVER_ADDRESS: address,
            SERVER_PORT: port,
        }
        start = self._monotonic()
        try:
            span_attributes: dict[str, Any] = {**attributes, URL_FULL: url_full}
            if resend_count:
                span_attributes[HTTP_REQUEST_RESEND_COUNT] = resend_count
            span = self._tracer.start_span(
                method, context=record.context, kind=SpanKind.CLIENT, attributes=span_attributes
            )
            # Only the suppression flag is made current, not the span: aiohttp's timer handles
            # copy the context and keep it until they expire, and a span kept there would
            # outlive the request by the read timeout.
            suppressed = otel_context.get_current()
            for key in SUPPRESS_INSTRUMENTATION_KEYS:
                suppressed = otel_context.set_value(key, True, suppressed)
            token = otel_context.attach(suppressed)
        except Exception:
            _logger.debug("could not start an attempt span", exc_info=True)
            return Attempt(trace.INVALID_SPAN, attributes, start, None)
        return Attempt(span, attributes, start, token)

    def finish_attempt(
        self, attempt: Attempt, *, status: int | None = None, error_type: str | None = None
    ) -> None:
        """End an attempt: its status code or error type, span, and duration."""
        attributes = attempt.attributes
        try:
            if attempt.token is not None:
                otel_context.detach(attempt.token)
            span = attempt.span
            if status is not None:
                attributes[HTTP_RESPONSE_STATUS_CODE] = status
                span.set_attribute(HTTP_RESPONSE_STATUS_CODE, status)
                if status >= 400:
                    error_type = str(status)
            if error_type is not None:
                attributes[ERROR_TYPE] = error_type
                span.set_attribute(ERROR_TYPE, error_type)
                span.set_status(Status(StatusCode.ERROR))
            span.end()
            duration = max(0.0, self._monotonic() - attempt.start)
            self._instruments.http_duration.record(duration, attributes)
        except Exception:
            _logger.debug("could not record an HTTP attempt", exc_info=True)


def _url_facts(url: str) -> tuple[str, int, str]:
    """``server.address``, ``server.port`` and ``url.full``. Endpoint URLs carry no user
    information (the environment is refused otherwise) and their queries no secrets, so the URL
    is shown as it is."""
    address, port = _server_of(url.partition("?")[0])
    return address, port, url


@functools.lru_cache(maxsize=64)
def _server_of(base_url: str) -> tuple[str, int]:
    parts = urlsplit(base_url)
    return parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)
