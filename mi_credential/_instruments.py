"""OpenTelemetry traces and metrics, through ``opentelemetry-api`` only: the meter instruments,
and the tracer and instruments of each provider. The names are :mod:`mi_credential.telemetry`'s;
recording is ``_recorder``'s.

* One INTERNAL span ``ManagedIdentityCredential.get_token`` per acquisition (a cache miss, an
  expired token, a forced or a background refresh), never per cache hit.
* One CLIENT span per HTTP attempt, with the stable HTTP semantic conventions. HTTP
  auto-instrumentation (e.g. ``opentelemetry-instrumentation-aiohttp-client``, any release) is
  suppressed inside it, so no span is doubled and no secret header is captured.
* Metrics (see the README's telemetry reference). Cache hits and the other per-call counts are
  plain integers (``_cache.CacheStats``), read by observable instruments at collection time: a
  cache hit makes no OpenTelemetry call.

Nothing recorded here carries a token, a secret header, key-file content or JWT claims. Telemetry
never breaks token acquisition: every call into OpenTelemetry is guarded.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from opentelemetry import metrics, trace
from opentelemetry.context import _SUPPRESS_HTTP_INSTRUMENTATION_KEY, _SUPPRESS_INSTRUMENTATION_KEY
from opentelemetry.metrics import CallbackOptions, Observation

from ._cache import CacheStats, live_caches
from ._version import __version__
from .telemetry import (
    ACQUISITION_BUCKETS,
    ACQUISITION_DURATION,
    CACHE_RESULT,
    COALESCED_WAITERS,
    HTTP_BUCKETS,
    HTTP_CLIENT_DURATION,
    INSTRUMENTATION_SCOPE,
    OUTCOME,
    RESOURCE,
    SCHEMA_URL,
    SHARED_CACHE_LOCK_WAITS,
    TIME_TO_EXPIRY,
    TOKEN_REFRESHES,
    TOKEN_REQUESTS,
)

if TYPE_CHECKING:
    from ._recorder import Recorder

#: What a token request makes current so that no auto-instrumentation adds a span of its own
#: beside the attempt's: the key azure-core and the HTTP instrumentations agree on, and the
#: general one, which the aiohttp-client instrumentation reads before 0.60b0.
SUPPRESS_INSTRUMENTATION_KEYS: tuple[str, ...] = (
    _SUPPRESS_HTTP_INSTRUMENTATION_KEY,
    _SUPPRESS_INSTRUMENTATION_KEY,
)


class Instruments:
    """The meter instruments of one meter provider, shared by every credential that uses it.

    Observable instruments are created once per meter (an SDK keeps only the first registration
    of a name); their callbacks read the shared :class:`~mi_credential._cache.CacheStats` and
    the live caches.
    """

    def __init__(self, meter_provider: metrics.MeterProvider | None) -> None:
        meter = metrics.get_meter(
            INSTRUMENTATION_SCOPE, __version__, meter_provider, schema_url=SCHEMA_URL
        )
        # Metric readers may collect from their own thread (periodic exporters, Prometheus's
        # HTTP server) while credentials are created on the event loop's.
        self._lock = threading.Lock()
        self._stats: dict[tuple[tuple[str, str], ...], CacheStats] = {}
        self.recorders: dict[tuple[tuple[str, str], ...], Recorder] = {}
        """Recorders shared by credentials with the global tracer and the default clock."""
        self.acquisition_duration = _histogram(
            meter,
            ACQUISITION_DURATION,
            "Duration of token acquisitions (cache misses and refreshes).",
            ACQUISITION_BUCKETS,
        )
        self.refreshes = meter.create_counter(
            TOKEN_REFRESHES,
            unit="{refresh}",
            description=(
                "Token acquisitions (cache misses and refreshes), by reason, origin and outcome."
            ),
        )
        self.lock_waits = meter.create_counter(
            SHARED_CACHE_LOCK_WAITS,
            unit="{wait}",
            description="Acquisitions that waited for another process's refresh of a shared token.",
        )
        self.http_duration = _histogram(
            meter, HTTP_CLIENT_DURATION, "Duration of HTTP client requests.", HTTP_BUCKETS
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

    def stats_for(self, attributes: dict[str, str]) -> CacheStats:
        """The counters of the credentials that record with ``attributes``."""
        key = tuple(sorted(attributes.items()))
        with self._lock:
            stats = self._stats.get(key)
            if stats is None:
                stats = self._stats[key] = CacheStats(dict(attributes))
        return stats

    def _snapshot(self) -> list[CacheStats]:
        with self._lock:
            return list(self._stats.values())

    def _observe_requests(self, options: CallbackOptions) -> Iterable[Observation]:
        observations = []
        for stats in self._snapshot():
            for result, outcome, value in (
                ("hit", "success", stats.hits),
                ("stale", "success", stats.stale),
                ("miss", "success", stats.miss_successes),
                ("miss", "error", stats.miss_errors),
                ("miss", "cancelled", stats.miss_cancels),
            ):
                attributes = {**stats.attributes, CACHE_RESULT: result, OUTCOME: outcome}
                observations.append(Observation(value, attributes))
        return observations

    def _observe_coalesced(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(s.coalesced, s.attributes) for s in self._snapshot()]

    def _observe_expiry(self, options: CallbackOptions) -> Iterable[Observation]:
        # Credentials with the same source, identity and resource report the soonest expiry.
        soonest: dict[tuple[tuple[str, str], ...], tuple[float, dict[str, str]]] = {}
        mine = set(self._snapshot())  # the caches that count with this meter's statistics
        for cache in live_caches():
            if cache.stats not in mine:
                continue
            for resource, value in cache.expiries():
                attributes = {**cache.stats.attributes, RESOURCE: resource}
                key = tuple(sorted(attributes.items()))
                if key not in soonest or value < soonest[key][0]:
                    soonest[key] = (value, attributes)
        return [Observation(value, attributes) for value, attributes in soonest.values()]


def _histogram(
    meter: metrics.Meter, name: str, description: str, buckets: tuple[float, ...]
) -> metrics.Histogram:
    """A histogram in seconds, advised to use ``buckets``. A meter of another implementation
    (or of opentelemetry-api before 1.30, below the floor) may take no advice
    (``explicit_bucket_boundaries_advisory``): there the histogram is made without it, and has
    the default boundaries unless a View sets them (``ExplicitBucketHistogramAggregation``)."""
    try:
        return meter.create_histogram(
            name,
            unit="s",
            description=description,
            explicit_bucket_boundaries_advisory=list(buckets),
        )
    except TypeError:
        return meter.create_histogram(name, unit="s", description=description)


class _GlobalProvider:
    """Stands for the global tracer or meter provider in :data:`_per_provider`: the API's
    proxies follow it, even one set later."""

    __slots__ = ("__weakref__", "name")

    def __init__(self, name: str) -> None:
        self.name = name


_GLOBAL_TRACER_PROVIDER = _GlobalProvider("tracer")
_GLOBAL_METER_PROVIDER = _GlobalProvider("meter")

#: The tracer of each tracer provider and the instruments of each meter provider, shared by the
#: credentials that use them, held no longer than the provider.
_per_provider: weakref.WeakKeyDictionary[object, Any] = weakref.WeakKeyDictionary()
_per_provider_lock = threading.Lock()


def _shared(key: object, build: Callable[[], Any]) -> Any:
    with _per_provider_lock:
        value = _per_provider.get(key)
        if value is None:
            value = _per_provider[key] = build()
    return value


def tracer_for(tracer_provider: trace.TracerProvider | None) -> trace.Tracer:
    """The tracer of ``tracer_provider`` (``None``: the global one)."""
    tracer: trace.Tracer = _shared(
        tracer_provider or _GLOBAL_TRACER_PROVIDER,
        lambda: trace.get_tracer(
            INSTRUMENTATION_SCOPE, __version__, tracer_provider, schema_url=SCHEMA_URL
        ),
    )
    return tracer


def instruments_for(meter_provider: metrics.MeterProvider | None) -> Instruments:
    """The instruments of ``meter_provider`` (``None``: the global one)."""
    instruments: Instruments = _shared(
        meter_provider or _GLOBAL_METER_PROVIDER, lambda: Instruments(meter_provider)
    )
    return instruments
