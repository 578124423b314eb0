"""The report printed after the steps, within :data:`~._stage.REPORT_WIDTH` columns: latency by
source, the cache, a line per metric, the span tree, every metric series with ``--verbose``; and
the pointers to what to try next.
"""

from __future__ import annotations

import textwrap
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from opentelemetry.sdk.metrics.export import Gauge, Histogram, Metric, MetricsData, Sum
from opentelemetry.sdk.trace import ReadableSpan

from mi_credential.telemetry import (
    ACQUISITION_DURATION,
    CACHE_RESULT,
    COALESCED_WAITERS,
    ERROR_TYPE,
    HTTP_CLIENT_DURATION,
    HTTP_RESPONSE_STATUS_CODE,
    OUTCOME,
    REFRESH_REASON,
    TIME_TO_EXPIRY,
    TOKEN_REFRESHES,
    TOKEN_REQUESTS,
)

from ._report import (
    cache_summary,
    duration,
    latency_by_source,
    our_metrics,
    render_metrics,
    render_span_tree,
    shown_points,
)
from ._stage import REPORT_WIDTH

#: The order of the metric summary; metrics not named here follow, by name.
_ORDER = (
    TOKEN_REQUESTS,
    ACQUISITION_DURATION,
    COALESCED_WAITERS,
    TOKEN_REFRESHES,
    TIME_TO_EXPIRY,
    HTTP_CLIENT_DURATION,
)
_INDENT = "   "


def _tally(points: Iterable[Any], key: str, *, weight: str = "value") -> Counter[str]:
    """The points' values (or counts) added up per value of the attribute ``key``."""
    counts: Counter[str] = Counter()
    for point in points:
        counts[str((point.attributes or {}).get(key, ""))] += int(getattr(point, weight))
    return counts


def _failed(points: Iterable[Any], *, weight: str = "value") -> int:
    return _tally(points, OUTCOME, weight=weight)["error"]


def _histogram(points: Sequence[Any], noun: str, unit: str) -> str:
    count = sum(p.count for p in points)
    if not count:
        return f"no {noun}"
    mean = sum(p.sum for p in points) / count
    high = max(p.max for p in points)
    if unit == "s":
        return f"{count} {noun}; mean {duration(mean)}, max {duration(high)}"
    return f"{count} {noun}; mean {mean:g}, max {high:g}"


def metric_digest(metric: Metric) -> str:
    """What the series of ``metric`` add up to, in a few words."""
    points = shown_points(metric)
    name = metric.name
    if name == TOKEN_REQUESTS:
        results = _tally(points, CACHE_RESULT)
        served = ", ".join(f"{results[r]} {r}" for r in ("hit", "stale", "miss") if results[r])
        failed = _failed(points)
        return f"{sum(results.values())} get_token calls: {served or 'none'}" + (
            f"; {failed} failed" if failed else ""
        )
    if name == ACQUISITION_DURATION:
        failed = _failed(points, weight="count")
        digest = _histogram(points, "acquisitions", metric.unit or "")
        return digest.replace(";", f", {failed} failed;", 1) if failed else digest
    if name == COALESCED_WAITERS:
        return f"{sum(int(p.value) for p in points)} callers joined an acquisition in flight"
    if name == TOKEN_REFRESHES:
        reasons = _tally(points, REFRESH_REASON)
        by_reason = ", ".join(f"{reason} {count}" for reason, count in sorted(reasons.items()))
        failed = _failed(points)
        return f"{sum(reasons.values())} refreshes ({by_reason})" + (
            f", {failed} failed" if failed else ""
        )
    if name == TIME_TO_EXPIRY and points:
        soonest = min(p.value for p in points)
        return f"{len(points)} cached tokens, the soonest expires in {soonest / 3600:.1f} h"
    if name == HTTP_CLIENT_DURATION:
        answers: Counter[str] = Counter()
        for point in points:
            attributes = point.attributes or {}
            answer = attributes.get(HTTP_RESPONSE_STATUS_CODE, attributes.get(ERROR_TYPE, "?"))
            answers[str(answer)] += point.count
        digest = _histogram(points, "attempts", metric.unit or "").split(", max")[0]
        statuses = ", ".join(
            f"{answer} ({n})" if n > 1 else answer for answer, n in sorted(answers.items())
        )
        return digest.replace(";", ",", 1) + (f": {statuses}" if statuses else "")
    if isinstance(metric.data, Histogram):
        return _histogram(points, "measurements", metric.unit or "")
    if isinstance(metric.data, Sum):
        return f"{sum(p.value for p in points):g} in all"
    if isinstance(metric.data, Gauge):
        return f"{len(points)} series"
    return ""


def render_metric_summary(
    data: MetricsData | None, width: int = REPORT_WIDTH, *, verbose: bool = False
) -> list[str]:
    """A title, then one line per metric: its name and :func:`metric_digest` (wrapped in its
    column within ``width``). The title points to ``--verbose`` unless ``verbose``."""
    metrics = sorted(
        our_metrics(data),
        key=lambda m: (_ORDER.index(m.name) if m.name in _ORDER else len(_ORDER), m.name),
    )
    metrics = [m for m in metrics if shown_points(m)]
    series = sum(len(shown_points(m)) for m in metrics)
    where = "every series below" if verbose else "every series: --verbose"
    lines = [f"Metrics ({len(metrics)} instruments, {series} series; {where})"]
    column = len(_INDENT) + max((len(m.name) for m in metrics), default=0) + 2
    for metric in metrics:
        lines += textwrap.wrap(
            metric_digest(metric),
            max(width, column + 20),
            initial_indent=f"{_INDENT}{metric.name}".ljust(column),
            subsequent_indent=" " * column,
            break_on_hyphens=False,
        )
    return lines


def render_report(
    data: MetricsData | None, spans: Sequence[ReadableSpan], *, verbose: bool = False
) -> list[str]:
    """The report printed after the steps, each section after a blank line: latency by source,
    the cache, the metric summary, the span tree and, if ``verbose``, every metric series."""
    inner = REPORT_WIDTH - len(_INDENT)
    lines = [
        "",
        "Acquisition latency by source (mi_credential.token.acquisition.duration)",
        f"{_INDENT}{'source':<18} {'acquisitions':>12} {'errors':>7} {'mean':>10} "
        f"{'min':>10} {'max':>10}",
    ]
    lines += [
        f"{_INDENT}{row.source:<18} {row.count:>12} {row.errors:>7} {duration(row.mean):>10} "
        f"{duration(row.min):>10} {duration(row.max):>10}"
        for row in latency_by_source(data)
    ]
    cache = cache_summary(data)
    lines += [
        "",
        "Cache (mi_credential.token.requests, mi_credential.token.coalesced_waiters)",
        f"{_INDENT}{cache.calls} get_token calls: {cache.hits + cache.stale} served from the "
        f"cache (hit ratio {cache.hit_ratio:.0%}), {cache.misses} waited for an acquisition,",
        f"{_INDENT}{cache.coalesced} of which joined one already in flight instead of sending a "
        "request of their own",
        "",
        *render_metric_summary(data, verbose=verbose),
        "",
        f"Span tree ({len(spans)} spans)",
        *(f"{_INDENT}{line}" for line in render_span_tree(spans, inner)),
    ]
    if verbose:
        lines += [
            "",
            "Metric values (counter series at zero left out)",
            *(f"{_INDENT}{line}" for line in render_metrics(data, inner)),
        ]
    return lines


def render_next(*, html: bool, verbose: bool) -> list[str]:
    """Where to go from here: the emulator for one's own programs, the samples, the dashboard;
    and the options of this command that were not used."""
    rows = [
        (
            "python -m mi_credential emulate",
            "the emulator on its own, for your own programs: it prints the variables that "
            "point an application at it",
        ),
        ("samples/", "programs to copy; each one runs here too, with --emulator"),
        ("samples/observability/", "a Grafana dashboard, with Prometheus and a collector:"),
    ]
    options = []
    if not html:
        options.append(
            ("demo --html report.html", "this run as a page: span waterfalls, latency per source")
        )
    if not verbose:
        options.append(("demo --verbose", "every metric series in this report"))
    column = 37
    lines = ["", "Next:"]
    for left, right in rows + options:
        lines += textwrap.wrap(
            right,
            REPORT_WIDTH,
            initial_indent=f"{_INDENT}{left}".ljust(column),
            subsequent_indent=" " * column,
            break_on_hyphens=False,
        )
        if left == "samples/observability/":
            lines += [
                f"{_INDENT}   cd samples/observability && docker compose up -d",
                f"{_INDENT}   python -m mi_credential demo --otlp http://localhost:4318 --hold 600",
            ]
    return lines


__all__ = ["metric_digest", "render_metric_summary", "render_next", "render_report"]
