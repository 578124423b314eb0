"""What the demo recorded, read from OpenTelemetry SDK data: the span tree and the metric values
as text, latency per hosting source and the cache hit ratio.

Only attribute values chosen here are shown (source, cache result, status codes, error types):
never ``url.full`` or anything else a reader of the terminal has no use for.
"""

from __future__ import annotations

import textwrap
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from opentelemetry.sdk.metrics.export import (
    Gauge,
    HistogramDataPoint,
    Metric,
    MetricsData,
    NumberDataPoint,
    Sum,
)
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind

from mi_credential.telemetry import (
    ACQUISITION_DURATION,
    ATTEMPTS,
    CACHE_RESULT,
    COALESCED_WAITERS,
    ERROR_TYPE,
    HTTP_REQUEST_RESEND_COUNT,
    HTTP_RESPONSE_STATUS_CODE,
    INSTRUMENTATION_SCOPE,
    OUTCOME,
    REFRESH_REASON,
    SERVER_ADDRESS,
    SERVER_PORT,
    SOURCE,
    TOKEN_REQUESTS,
)

_PREFIX = "mi_credential."


def duration(seconds: float) -> str:
    """``850 µs``, ``12.3 ms``, ``1.24 s``."""
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 1.0:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds:.2f} s"


# -- spans --------------------------------------------------------------------------------------


def _span_seconds(span: ReadableSpan) -> float:
    if span.start_time is None or span.end_time is None:
        return 0.0
    return (span.end_time - span.start_time) / 1e9


def span_parts(span: ReadableSpan) -> list[str]:
    """A span's name, then the few attribute values the report shows, in order."""
    attributes: Mapping[str, Any] = span.attributes or {}
    parts = [span.name]
    if span.kind is SpanKind.CLIENT and SERVER_ADDRESS in attributes:
        parts[0] += f" {attributes[SERVER_ADDRESS]}:{attributes.get(SERVER_PORT, '')}"
    if SOURCE in attributes:
        parts.append(str(attributes[SOURCE]))
    if CACHE_RESULT in attributes:
        parts.append(f"{attributes[CACHE_RESULT]}/{attributes.get(REFRESH_REASON, '')}")
    if ATTEMPTS in attributes:
        count = attributes[ATTEMPTS]
        parts.append(f"{count} attempt{'s' if count != 1 else ''}")
    if HTTP_REQUEST_RESEND_COUNT in attributes:
        parts.append(f"retry {attributes[HTTP_REQUEST_RESEND_COUNT]}")
    if HTTP_RESPONSE_STATUS_CODE in attributes:
        parts.append(f"-> {attributes[HTTP_RESPONSE_STATUS_CODE]}")
    if ERROR_TYPE in attributes and HTTP_RESPONSE_STATUS_CODE not in attributes:
        parts.append(f"error {attributes[ERROR_TYPE]}")
    return parts


def span_children(spans: Sequence[ReadableSpan]) -> dict[int | None, list[ReadableSpan]]:
    """The spans under each span id, in start order; under ``None``, the roots: the spans
    whose parent was not recorded (another process's span, say) count as roots."""
    ids = {span.context.span_id for span in spans if span.context is not None}
    children: dict[int | None, list[ReadableSpan]] = defaultdict(list)
    for span in spans:
        parent = span.parent.span_id if span.parent is not None else None
        children[parent if parent in ids else None].append(span)
    for group in children.values():
        group.sort(key=lambda s: s.start_time or 0)
    return children


def render_span_tree(spans: Sequence[ReadableSpan], width: int = 1_000) -> list[str]:
    """Every span under its parent, in start order, after its duration.

    A row wider than ``width`` goes on below its span, under the tree's lines.
    """
    children = span_children(spans)
    lines: list[str] = []

    def walk(span: ReadableSpan, prefix: str, branch: str) -> None:
        kids = children.get(span.context.span_id if span.context else None, [])
        extension = "" if not branch else ("   " if branch == "└─ " else "│  ")
        # Durations first, in a column, so that deep or long labels never push them out of line.
        head = f"{duration(_span_seconds(span)):>9}  {prefix}{branch}"
        below = " " * 11 + prefix + extension + ("│  " if kids else "   ") + "   "
        parts = span_parts(span)
        line = head + parts[0]
        for part in parts[1:]:
            if len(line) + 2 + len(part) > width:
                lines.append(line)
                line = below + part
            else:
                line += "  " + part
        lines.append(line)
        for index, kid in enumerate(kids):
            walk(kid, prefix + extension, "└─ " if index == len(kids) - 1 else "├─ ")

    for root in children.get(None, []):
        walk(root, "", "")
    return lines


# -- metrics ------------------------------------------------------------------------------------


def our_metrics(data: MetricsData | None) -> Iterator[Metric]:
    """The metrics of the mi_credential instrumentation scope."""
    if data is None:
        return
    for resource_metrics in data.resource_metrics:
        for scope_metrics in resource_metrics.scope_metrics:
            if scope_metrics.scope.name == INSTRUMENTATION_SCOPE:
                yield from scope_metrics.metrics


def _points(data: MetricsData | None, name: str) -> list[Any]:
    return [p for m in our_metrics(data) if m.name == name for p in m.data.data_points]


def _attributes(attributes: Mapping[str, Any] | None) -> str:
    return " ".join(
        f"{key.removeprefix(_PREFIX)}={value}" for key, value in sorted((attributes or {}).items())
    )


def shown_points(metric: Metric) -> list[Any]:
    """The data points of ``metric`` worth showing (counters' zero-valued ones left out)."""
    points: Iterable[Any] = metric.data.data_points
    if isinstance(metric.data, Sum):
        points = [p for p in points if p.value]
    return sorted(points, key=lambda p: _attributes(p.attributes))


def render_metrics(data: MetricsData | None, width: int = 1_000) -> list[str]:
    """Each metric with each of its data points; counters' zero-valued series are left out.
    A point's attributes wider than ``width`` go on below, in their column."""
    lines: list[str] = []
    for metric in sorted(our_metrics(data), key=lambda m: m.name):
        kind = type(metric.data).__name__.lower()
        if isinstance(metric.data, Sum) and not metric.data.is_monotonic:
            kind = "up-down counter"
        elif isinstance(metric.data, Sum):
            kind = "counter"
        unit = f", {metric.unit}" if metric.unit else ""
        rows = [(_value(metric, p), _attributes(p.attributes)) for p in shown_points(metric)]
        if not rows:
            continue
        lines.append(f"{metric.name} ({kind}{unit})")
        column = 2 + max(len(value) for value, _ in rows) + 2
        for value, attributes in rows:
            lines += textwrap.wrap(
                attributes,
                max(width, column + 20),
                initial_indent=f"  {value}".ljust(column),
                subsequent_indent=" " * column,
                break_on_hyphens=False,
            ) or [f"  {value}"]
    return lines


def _value(metric: Metric, point: NumberDataPoint | HistogramDataPoint) -> str:
    if isinstance(point, HistogramDataPoint):
        mean = point.sum / point.count if point.count else 0.0
        if metric.unit == "s":
            compact = duration(mean).replace(" ", ""), duration(point.max).replace(" ", "")
            return f"count={point.count} mean={compact[0]} max={compact[1]}"
        return f"count={point.count} sum={point.sum:g}"
    if isinstance(metric.data, Gauge) and metric.unit == "s":
        return f"{point.value / 3600:.2f} h"
    return f"{point.value:g}"


@dataclass(frozen=True)
class SourceLatency:
    """Acquisitions of one hosting source, from the acquisition duration histogram."""

    source: str
    count: int
    errors: int
    mean: float
    min: float
    max: float


def latency_by_source(data: MetricsData | None) -> list[SourceLatency]:
    """Acquisition count, errors and latency per source."""
    totals: dict[str, list[float]] = {}
    for point in _points(data, ACQUISITION_DURATION):
        if not isinstance(point, HistogramDataPoint) or not point.count:
            continue
        attributes = point.attributes or {}
        source = str(attributes.get(SOURCE, "?"))
        count, errors, total, low, high = totals.get(source, [0, 0, 0.0, float("inf"), 0.0])
        failed = point.count if attributes.get(OUTCOME) == "error" else 0
        totals[source] = [
            count + point.count,
            errors + failed,
            total + point.sum,
            min(low, point.min),
            max(high, point.max),
        ]
    return [
        SourceLatency(source, int(c), int(e), s / c, low, high)
        for source, (c, e, s, low, high) in sorted(totals.items())
    ]


@dataclass(frozen=True)
class CacheSummary:
    """``get_token`` calls by how they were served, from the request counter."""

    hits: int
    stale: int
    misses: int
    coalesced: int

    @property
    def calls(self) -> int:
        return self.hits + self.stale + self.misses

    @property
    def hit_ratio(self) -> float:
        """Calls served from the cache (fresh or stale) over all calls."""
        return (self.hits + self.stale) / self.calls if self.calls else 0.0


def cache_summary(data: MetricsData | None) -> CacheSummary:
    """Totals over every source and identity."""
    totals: dict[str, int] = defaultdict(int)
    for point in _points(data, TOKEN_REQUESTS):
        result = str((point.attributes or {}).get(CACHE_RESULT, ""))
        totals[result] += int(point.value)
    coalesced = sum(int(p.value) for p in _points(data, COALESCED_WAITERS))
    return CacheSummary(totals["hit"], totals["stale"], totals["miss"], coalesced)


__all__ = [
    "CacheSummary",
    "SourceLatency",
    "cache_summary",
    "duration",
    "latency_by_source",
    "our_metrics",
    "render_metrics",
    "render_span_tree",
    "shown_points",
    "span_children",
    "span_parts",
]
