"""OpenTelemetry traces and metrics, through ``opentelemetry-api`` only.

* One INTERNAL span ``ManagedIdentityCredential.get_token`` per acquisition (a cache miss, an
  expired token, a forced or a background refresh), never per cache hit.
* One CLIENT span per HTTP attempt, with the stable HTTP semantic conventions. HTTP
  auto-instrumentation (e.g. ``opentelemetry-instrumentation-aiohttp-client``) is suppressed
  inside it, so no span is doubled and no secret header is captured.
* Metrics (see the README's telemetry reference). Cache hits and the other per-call counts are
  plain integers on the credential, read by observable instruments at collection time: a cache
  hit makes no OpenTelemetry call.

Nothing recorded here carries a token, a secret header, key-file content or JWT claims. Telemetry
never breaks token acquisition: every call into OpenTelemetry is guarded.
"""

from __future__ import annotations

import functools
import logging
import threading
import weakref
from collections.abc import Callable, Iterable
from time import monotonic as _monotonic
from typing import Any, ClassVar, Protocol
from urllib.parse import urlsplit

from opentelemetry import context as otel_context
from opentelemetry import metrics, trace
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.trace import SpanKind, Status, StatusCode

from ._sources._base import redact_url
from ._version import __version__

_logger = logging.getLogger(__name__)

INSTRUMENTATION_SCOPE = "mi_credential"
SCHEMA_URL = "https://opentelemetry.io/schemas/1.27.0"

try:  # The key azure-core and the HTTP instrumentations agree on.
    from opentelemetry.context import (
        _SUPPRESS_HTTP_INSTRUMENTATION_KEY as SUPPRESS_HTTP_INSTRUMENTATION_KEY,
    )
except ImportError:  # pragma: no cover - very old opentelemetry-api
    SUPPRESS_HTTP_INSTRUMENTATION_KEY = "suppress_http_instrumentation"

# Span and metric names.
ACQUISITION_SPAN = "ManagedIdentityCredential.get_token"
ACQUISITION_DURATION = "mi_credential.token.acquisition.duration"
TOKEN_REQUESTS = "mi_credential.token.requests"
TOKEN_REFRESHES = "mi_credential.token.refreshes"
COALESCED_WAITERS = "mi_credential.token.coalesced_waiters"
TIME_TO_EXPIRY = "mi_credential.token.time_to_expiry"
HTTP_CLIENT_DURATION = "http.client.request.duration"

# Attribute names.
SOURCE = "mi_credential.source"
IDENTITY_KIND = "mi_credential.identity.kind"
RESOURCE = "mi_credential.resource"
CACHE_RESULT = "mi_credential.cache.result"
REFRESH_REASON = "mi_credential.refresh.reason"
ATTEMPTS = "mi_credential.attempts"
OUTCOME = "mi_credential.outcome"
ERROR_TYPE = "error.type"
HTTP_REQUEST_METHOD = "http.request.method"
HTTP_RESPONSE_STATUS_CODE = "http.response.status_code"
HTTP_REQUEST_RESEND_COUNT = "http.request.resend_count"
SERVER_ADDRESS = "server.address"
SERVER_PORT = "server.port"
URL_FULL = "url.full"

ACQUISITION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10)


class TelemetrySubject(Protocol):
    """What the time-to-expiry gauge reads from a live credential."""

    def telemetry_expiries(self) -> Iterable[tuple[float, dict[str, str]]]:
        """``(seconds to expiry, attributes)`` per cached token."""
        ...


class RequestCounts:
    """Plain counters of get_token/get_token_info calls, shared by the credentials that record
    with the same attributes and read by observable instruments at collection time: counting
    costs the hot path an integer increment, never an OpenTelemetry call, and totals survive the
    credentials that made them."""

    __slots__ = ("attributes", "coalesced", "hits", "miss_errors", "misses", "stale")

    def __init__(self, attributes: dict[str, str]) -> None:
        self.attributes = attributes
        self.hits = 0
        self.stale = 0
        self.misses = 0
        self.miss_errors = 0
        self.coalesced = 0


class _MeterHub:
    """The instruments of one meter provider, shared by every credential that uses it.

    Observable instruments are created once per meter (an SDK keeps only the first registration
    of a name); their callbacks read the shared :class:`RequestCounts` and the live credentials.
    """

    def __init__(self, meter_provider: metrics.MeterProvider | None) -> None:
        meter = metrics.get_meter(
            INSTRUMENTATION_SCOPE, __version__, meter_provider, schema_url=SCHEMA_URL
        )
        # Metric readers may collect from their own thread (periodic exporters, Prometheus's
        # HTTP server) while credentials are created on the event loop's.
        self._lock = threading.Lock()
        self._subjects: weakref.WeakSet[Any] = weakref.WeakSet()
        self.counts: dict[tuple[tuple[str, str], ...], RequestCounts] = {}
        self.acquisition_duration = meter.create_histogram(
            ACQUISITION_DURATION,
            unit="s",
            description="Duration of token acquisitions (cache misses and refreshes).",
            explicit_bucket_boundaries_advisory=list(ACQUISITION_BUCKETS),
        )
        self.refreshes = meter.create_counter(
            TOKEN_REFRESHES,
            unit="{refresh}",
            description="Token acquisitions from the endpoint, by reason and outcome.",
        )
        self.http_duration = meter.create_histogram(
            HTTP_CLIENT_DURATION,
            unit="s",
            description="Duration of HTTP client requests.",
            explicit_bucket_boundaries_advisory=list(HTTP_BUCKETS),
        )
        meter.create_observable_counter(
            TOKEN_REQUESTS,
            callbacks=[self._observe_requests],
            unit="{request}",
            description="get_token/get_token_info calls, by cache result and outcome.",
        )
        meter.create_observable_counter(
            COALESCED_WAITERS,
            callbacks=[self._observe_coalesced],
            unit="{request}",
            description="Calls that joined an acquisition already in flight.",
        )
        meter.create_observable_gauge(
            TIME_TO_EXPIRY,
            callbacks=[self._observe_expiry],
            unit="s",
            description="Seconds until each cached token expires.",
        )

    def counts_for(self, attributes: dict[str, str]) -> RequestCounts:
        """The counters of the credentials that record with ``attributes``."""
        key = tuple(sorted(attributes.items()))
        with self._lock:
            counts = self.counts.get(key)
            if counts is None:
                counts = self.counts[key] = RequestCounts(dict(attributes))
        return counts

    def watch(self, subject: TelemetrySubject) -> None:
        """Read ``subject``'s cached tokens for the time-to-expiry gauge while it lives."""
        with self._lock:
            self._subjects.add(subject)

    def _snapshot(self) -> tuple[list[RequestCounts], list[Any]]:
        with self._lock:
            return list(self.counts.values()), list(self._subjects)

    def _observe_requests(self, options: CallbackOptions) -> Iterable[Observation]:
        observations = []
        for counts in self._snapshot()[0]:
            for result, outcome, value in (
                ("hit", "success", counts.hits),
                ("stale", "success", counts.stale),
                ("miss", "success", counts.misses - counts.miss_errors),
                ("miss", "error", counts.miss_errors),
            ):
                attributes = {**counts.attributes, CACHE_RESULT: result, OUTCOME: outcome}
                observations.append(Observation(value, attributes))
        return observations

    def _observe_coalesced(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(c.coalesced, c.attributes) for c in self._snapshot()[0]]

    def _observe_expiry(self, options: CallbackOptions) -> Iterable[Observation]:
        # Credentials with the same source, identity and resource report the soonest expiry.
        soonest: dict[tuple[tuple[str, str], ...], tuple[float, dict[str, str]]] = {}
        for subject in self._snapshot()[1]:
            for value, attributes in subject.telemetry_expiries():
                key = tuple(sorted(attributes.items()))
                if key not in soonest or value < soonest[key][0]:
                    soonest[key] = (value, attributes)
        return [Observation(value, attributes) for value, attributes in soonest.values()]


_hubs: weakref.WeakKeyDictionary[Any, _MeterHub] = weakref.WeakKeyDictionary()
_global_hub: list[_MeterHub] = []


def _hub_for(meter_provider: metrics.MeterProvider | None) -> _MeterHub:
    if meter_provider is None:
        # The global provider may be set later; the API's proxy meter forwards to it.
        if not _global_hub:
            _global_hub.append(_MeterHub(None))
        return _global_hub[0]
    hub = _hubs.get(meter_provider)
    if hub is None:
        hub = _hubs[meter_provider] = _MeterHub(meter_provider)
    return hub


_tracers: weakref.WeakKeyDictionary[Any, trace.Tracer] = weakref.WeakKeyDictionary()
_global_tracer: list[trace.Tracer] = []


def _tracer_for(tracer_provider: trace.TracerProvider | None) -> trace.Tracer:
    """One tracer per provider, shared by the credentials that use it."""
    if tracer_provider is None:
        # The API's proxy tracer follows the global provider, even one set later.
        if not _global_tracer:
            _global_tracer.append(
                trace.get_tracer(INSTRUMENTATION_SCOPE, __version__, schema_url=SCHEMA_URL)
            )
        return _global_tracer[0]
    tracer = _tracers.get(tracer_provider)
    if tracer is None:
        tracer = _tracers[tracer_provider] = trace.get_tracer(
            INSTRUMENTATION_SCOPE, __version__, tracer_provider, schema_url=SCHEMA_URL
        )
    return tracer


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


class CredentialTelemetry:
    """The tracer and instruments credentials record with.

    Recording is explicit start/finish calls rather than context managers: this is the cold
    path of every acquisition, and generator-based context managers cost more than the
    recording itself. Every call is guarded: telemetry never fails an acquisition. Holds no
    per-credential state: credentials that record alike share one (:meth:`get`).

    Args:
        tracer_provider: Tracer provider; the global one if ``None``.
        meter_provider: Meter provider; the global one if ``None``.
        attributes: Attributes common to everything this credential records.
        monotonic: The clock durations are measured with.
    """

    _shared: ClassVar[dict[tuple[tuple[str, str], ...], CredentialTelemetry]] = {}

    @classmethod
    def get(
        cls,
        *,
        tracer_provider: trace.TracerProvider | None,
        meter_provider: metrics.MeterProvider | None,
        attributes: dict[str, str],
        monotonic: Callable[[], float],
    ) -> CredentialTelemetry:
        """The telemetry for a credential: shared by every credential with the global providers,
        the default clock and the same attributes; a new one otherwise."""
        shareable = tracer_provider is None and meter_provider is None and monotonic is _monotonic
        key = tuple(sorted(attributes.items()))
        telemetry = cls._shared.get(key) if shareable else None
        if telemetry is None:
            telemetry = cls(
                tracer_provider=tracer_provider,
                meter_provider=meter_provider,
                attributes=attributes,
                monotonic=monotonic,
            )
            if shareable:
                cls._shared[key] = telemetry
        return telemetry

    def __init__(
        self,
        *,
        tracer_provider: trace.TracerProvider | None,
        meter_provider: metrics.MeterProvider | None,
        attributes: dict[str, str],
        monotonic: Callable[[], float],
    ) -> None:
        self.attributes = attributes
        self._monotonic = monotonic
        try:
            self._tracer = _tracer_for(tracer_provider)
        except Exception:
            _logger.warning("OpenTelemetry tracing is disabled: the tracer provider failed")
            self._tracer = trace.NoOpTracer()
        try:
            self._hub = _hub_for(meter_provider)
        except Exception:
            _logger.warning("OpenTelemetry metrics are disabled: the meter provider failed")
            self._hub = _MeterHub(metrics.NoOpMeterProvider())
        self.counts = self._hub.counts_for(attributes)

    def watch(self, subject: TelemetrySubject) -> None:
        """Report ``subject``'s cached tokens to the time-to-expiry gauge (held weakly)."""
        self._hub.watch(subject)

    def start_acquisition(self, resource: str, reason: str, cache_result: str) -> Acquisition:
        """Start the INTERNAL span of an acquisition, a child of the caller's current span."""
        attributes = {
            **self.attributes,
            RESOURCE: resource,
            CACHE_RESULT: cache_result,
            REFRESH_REASON: reason,
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
            self._hub.acquisition_duration.record(
                max(0.0, self._monotonic() - record.start), metric_attributes
            )
            self._hub.refreshes.add(1, metric_attributes)
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
            token = otel_context.attach(
                otel_context.set_value(SUPPRESS_HTTP_INSTRUMENTATION_KEY, True)
            )
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
            self._hub.http_duration.record(max(0.0, self._monotonic() - attempt.start), attributes)
        except Exception:
            _logger.debug("could not record an HTTP attempt", exc_info=True)


def _url_facts(url: str) -> tuple[str, int, str]:
    """``server.address``, ``server.port`` and ``url.full``. Endpoint URLs carry no user
    information (the environment is refused otherwise), so the URL is shown as it is."""
    address, port = _server_of(url.partition("?")[0])
    return address, port, url


@functools.lru_cache(maxsize=64)
def _server_of(base_url: str) -> tuple[str, int]:
    parts = urlsplit(redact_url(base_url))
    return parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)
