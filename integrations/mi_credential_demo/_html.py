"""``--html PATH``: the report as one self-contained page (inline CSS and SVG; no script, font,
image or request of any kind), to look at rather than read: the acquisition latency per source,
the span waterfall of each acquisition, and the whole run's spans on one time axis.

As in the printed report, only attribute values chosen here are shown (source, resource, cache
result, attempts, status codes, error types); never ``url.full``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from html import escape
from typing import Any

from opentelemetry.sdk.metrics.export import MetricsData
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind, StatusCode

from mi_credential import __version__
from mi_credential.telemetry import (
    ACQUISITION_SPAN,
    CACHE_RESULT,
    ERROR_TYPE,
    HTTP_REQUEST_RESEND_COUNT,
    HTTP_RESPONSE_STATUS_CODE,
    REFRESH_REASON,
    RESOURCE,
    SERVER_ADDRESS,
    SOURCE,
)

from ._report import cache_summary, duration, span_children, span_parts
from ._svg import Bar, SourceTimes, latency_chart, waterfall

#: The whole run's waterfall shows at most this many spans (a long ``--hold`` makes thousands).
MAX_RUN_SPANS = 300
#: At most this many acquisitions get a waterfall of their own.
MAX_ACQUISITIONS = 120
_PAGE = 1100

_CSS = """
:root { --bg: #f7f8fa; --card: #fff; --ink: #1d2330; --muted: #5f6b7d; --line: #dfe3ea;
  --acq: #2f6fde; --attempt: #12998a; --client: #7c8799; --server: #8a55d7; --step: #b3bcc9;
  --refused: #e49a1c; --error: #d64545; --band: #2f6fde26; color-scheme: light dark; }
@media (prefers-color-scheme: dark) {
  :root { --bg: #14171d; --card: #1d2129; --ink: #e6e9ef; --muted: #9aa5b5; --line: #2e3440;
    --step: #4b5463; --band: #5b8ff040; } }
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--ink);
  font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", sans-serif; }
main { max-width: 1188px; margin: 0 auto; padding: 20px 24px 40px; }
h1 { font-size: 22px; margin: 0; } h2 { font-size: 16px; margin: 0 0 4px; }
.sub, .note, figcaption .where { color: var(--muted); } .note { margin: 0 0 10px; font-size: 13px; }
section { background: var(--card); border: 1px solid var(--line); border-radius: 8px;
  padding: 14px 16px; margin-top: 16px; overflow-x: auto; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; margin-top: 14px; }
.card { flex: 1 1 150px; background: var(--card); border: 1px solid var(--line);
  border-radius: 8px; padding: 10px 14px; }
.card b { display: block; font-size: 22px; } .card span { color: var(--muted); font-size: 12px; }
.card.ok b { color: var(--attempt); } .card.failed b { color: var(--error); }
ul.steps { margin: 6px 0 0; padding: 0; list-style: none; display: flex; gap: 18px;
  flex-wrap: wrap; }
ul.steps li.ok::before { content: "✓ "; color: var(--attempt); font-weight: bold; }
ul.steps li.failed::before { content: "✗ "; color: var(--error); font-weight: bold; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(350px, 1fr)); gap: 10px; }
figure { margin: 0; border: 1px solid var(--line); border-radius: 6px; padding: 8px 10px; }
figcaption { font-size: 13px; margin-bottom: 2px; } figcaption .failed { color: var(--error); }
.legend { display: flex; gap: 16px; font-size: 12px; color: var(--muted); margin: 0 0 8px; }
.legend i { display: inline-block; width: 12px; height: 10px; border-radius: 2px;
  margin-right: 5px; vertical-align: -1px; }
svg { display: block; font-size: 11px; font-family: inherit; }
svg text { fill: var(--ink); } svg .tick, svg .value, svg .stats { fill: var(--muted); }
svg .value.inside { fill: #fff; }
svg .grid { stroke: var(--line); } svg .grid.minor { stroke-dasharray: 2 3; }
.bar { fill: var(--step); } .acquisition .bar, i.acquisition { fill: var(--acq);
  background: var(--acq); }
.attempt .bar, i.attempt { fill: var(--attempt); background: var(--attempt); }
.client .bar, i.client { fill: var(--client); background: var(--client); }
.server .bar, i.server { fill: var(--server); background: var(--server); }
i.step { background: var(--step); } i.refused { background: var(--refused); }
i.error { background: var(--error); }
.span.refused .bar { fill: var(--refused); } .span.error .bar { fill: var(--error); }
.wait line { stroke: var(--muted); stroke-dasharray: 3 3; } .wait text { fill: var(--muted); }
.range { fill: var(--band); } .mean { stroke: var(--ink); stroke-width: 2; }
.dot { fill: var(--acq); stroke: var(--card); stroke-width: 1; } .dot.error { fill: var(--error); }
footer { color: var(--muted); font-size: 12px; margin-top: 16px; }
"""


def _kind(span: ReadableSpan) -> str:
    attributes = span.attributes or {}
    if span.name == ACQUISITION_SPAN:
        return "acquisition"
    if span.kind is SpanKind.CLIENT:
        return "attempt" if SERVER_ADDRESS in attributes else "client"
    return "server" if span.kind is SpanKind.SERVER else "step"


def _status(span: ReadableSpan) -> str:
    """``refused`` for an HTTP answer of 400 or more, ``error`` for a failure without one."""
    attributes = span.attributes or {}
    status = attributes.get(HTTP_RESPONSE_STATUS_CODE)
    if isinstance(status, int):
        return "refused" if status >= 400 else ""
    failed = span.status.status_code is StatusCode.ERROR or ERROR_TYPE in attributes
    return "error" if failed else ""


def _seconds(span: ReadableSpan, origin: int) -> tuple[float, float]:
    start = span.start_time or origin
    return (start - origin) / 1e9, ((span.end_time or start) - origin) / 1e9


def _attempt_label(span: ReadableSpan) -> str:
    attributes: Mapping[str, Any] = span.attributes or {}
    label = span.name
    if HTTP_REQUEST_RESEND_COUNT in attributes:
        label += f" retry {attributes[HTTP_REQUEST_RESEND_COUNT]}"
    if HTTP_RESPONSE_STATUS_CODE in attributes:
        label += f" → {attributes[HTTP_RESPONSE_STATUS_CODE]}"
    elif ERROR_TYPE in attributes:
        label += f" ✗ {attributes[ERROR_TYPE]}"
    return label


def _eventful(span: ReadableSpan, children: Mapping[int | None, list[ReadableSpan]]) -> bool:
    """Whether an acquisition took more than one HTTP attempt, or failed."""
    kids = children.get(span.context.span_id if span.context else None, [])
    return len(kids) > 1 or ERROR_TYPE in (span.attributes or {})


def _acquisition_figure(
    span: ReadableSpan, parent: str, children: Mapping[int | None, list[ReadableSpan]]
) -> str:
    attributes = span.attributes or {}
    origin = span.start_time or 0
    start, end = _seconds(span, origin)
    detail = "  ".join(span_parts(span))
    bars = [Bar("get_token", start, end, "acquisition", 0, _status(span), detail)]

    def add(node: ReadableSpan, depth: int) -> None:
        for kid in children.get(node.context.span_id if node.context else None, []):
            kid_start, kid_end = _seconds(kid, origin)
            detail = "  ".join(span_parts(kid))
            bars.append(Bar(_attempt_label(kid), kid_start, kid_end, _kind(kid), depth,
                            _status(kid), detail))
            add(kid, depth + 1)

    add(span, 1)
    attempts = len(bars) - 1
    caption = [
        f"<b>{escape(str(attributes.get(SOURCE, '?')))}</b>",
        f"<b>{escape(duration(end - start))}</b>",
        escape(f"{attributes.get(CACHE_RESULT, '')}/{attributes.get(REFRESH_REASON, '')}"),
        f"{attempts} attempt{'s' if attempts != 1 else ''}",
    ]
    if ERROR_TYPE in attributes:
        caption.append(f'<span class="failed">failed: {escape(str(attributes[ERROR_TYPE]))}</span>')
    where = " · ".join(escape(str(v)) for v in (attributes.get(RESOURCE), parent) if v)
    return (
        f'<figure class="acquisition" data-source="{escape(str(attributes.get(SOURCE, "")))}">'
        f"<figcaption>{' · '.join(caption)}<br><span class=\"where\">{where}</span></figcaption>"
        f"{waterfall(bars, width=340, label_width=132, waits=True)}</figure>"
    )


def _run_waterfall(spans: Sequence[ReadableSpan]) -> tuple[str, int]:
    """The whole run's spans in tree order on one axis; and how many were left out."""
    children = span_children(spans)
    origin = min((s.start_time or 0 for s in spans), default=0)
    bars: list[Bar] = []

    def walk(span: ReadableSpan, depth: int) -> None:
        if len(bars) == MAX_RUN_SPANS:
            return
        start, end = _seconds(span, origin)
        parts, kind = span_parts(span), _kind(span)
        label = parts[0]
        if kind == "acquisition":
            label = f"get_token  {(span.attributes or {}).get(SOURCE, '?')}"
        elif kind == "attempt":
            label = _attempt_label(span)
        bars.append(Bar(label, start, end, kind, depth, _status(span), "  ".join(parts)))
        for kid in children.get(span.context.span_id if span.context else None, []):
            walk(kid, depth + 1)

    for root in children.get(None, []):
        walk(root, 0)
    if not bars:
        return "", 0
    return waterfall(bars, width=_PAGE, label_width=400, row=17, css="waterfall run"), (
        len(spans) - len(bars)
    )


_LEGEND = {
    "acquisition": "acquisition (get_token)",
    "attempt": "its HTTP attempts",
    "client": "the demo's calls",
    "server": "servers",
    "step": "steps",
    "refused": "answered 400 or more",
    "error": "failed",
}


def _legend(*kinds: str) -> str:
    items = "".join(f'<span><i class="{k}"></i>{escape(_LEGEND[k])}</span>' for k in kinds)
    return f'<p class="legend">{items}</p>'


def render_html(
    spans: Sequence[ReadableSpan],
    data: MetricsData | None,
    *,
    results: Mapping[str, bool],
    now: datetime | None = None,
) -> str:
    """The page, from the spans and metrics the demo recorded and each step's result."""
    children = span_children(spans)
    names = {s.context.span_id: s.name for s in spans if s.context is not None}
    acquisitions = sorted(
        (s for s in spans if s.name == ACQUISITION_SPAN), key=lambda s: s.start_time or 0
    )
    times: dict[str, list[tuple[float, bool]]] = defaultdict(list)
    for span in acquisitions:
        start, end = _seconds(span, span.start_time or 0)
        attributes = span.attributes or {}
        times[str(attributes.get(SOURCE, "?"))].append((end - start, ERROR_TYPE in attributes))
    rows = [
        SourceTimes(source, tuple(t for t, _ in pairs), tuple(bad for _, bad in pairs))
        for source, pairs in sorted(times.items())
    ]
    cache = cache_summary(data)
    ok = bool(results) and all(results.values())
    attempts = sum(1 for s in spans if _kind(s) == "attempt")
    cards = [
        ("ok" if ok else "failed", "OK" if ok else "FAILED",
         f"{sum(results.values())} of {len(results)} steps worked"),
        ("", str(len(acquisitions)), "acquisitions (cache misses and refreshes)"),
        ("", f"{cache.hit_ratio:.0%}", f"cache hit ratio, {cache.calls} get_token calls"),
        ("", str(cache.coalesced), "callers that joined an acquisition in flight"),
        ("", str(attempts), "HTTP attempts to the endpoints"),
        ("", str(len(spans)), "spans recorded"),
    ]
    shown = sorted(acquisitions, key=lambda s: not _eventful(s, children))[:MAX_ACQUISITIONS]
    figures = "".join(
        _acquisition_figure(
            span,
            names.get(span.parent.span_id, "") if span.parent is not None else "",
            children,
        )
        for span in shown
    )
    more = len(acquisitions) - len(shown)
    run, left_out = _run_waterfall(spans)
    stamp = (now or datetime.now(timezone.utc)).strftime("%Y-%m-%d %H:%M:%S %Z")
    steps = "".join(
        f'<li class="{"ok" if good else "failed"}">{escape(title)}</li>'
        for title, good in results.items()
    )
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>mi-credential demo report</title>
<link rel="icon" href="data:,">
<style>{_CSS}</style>
</head>
<body>
<main>
<h1>mi-credential demo</h1>
<p class="sub">mi-credential {escape(__version__)} · {escape(stamp)} · every hosting source,
against the local emulator. No token or secret is in this page.</p>
<div class="cards">{"".join(
    f'<div class="card {css}"><b>{escape(big)}</b><span>{escape(small)}</span></div>'
    for css, big, small in cards)}</div>
<ul class="steps">{steps}</ul>
<section id="latency">
<h2>Acquisition latency by source</h2>
<p class="note">One dot per acquisition (its span), red if it failed; the band runs from the
fastest to the slowest, the line marks the mean. Logarithmic axis.</p>
{latency_chart(rows, width=_PAGE)}
</section>
<section id="acquisitions">
<h2>Each acquisition, span by span</h2>
<p class="note">The acquisition span and its HTTP attempts, placed by their start and end times
on the acquisition's own axis; a wait before a retry is marked. Those that took more than one
attempt or failed come first, then the others, each in the order they ran.{
    f" The first {len(shown)} of {len(acquisitions)} are shown." if more else ""}</p>
{_legend("acquisition", "attempt", "refused", "error")}
<div class="grid">{figures}</div>
</section>
<section id="run">
<h2>The whole run</h2>
<p class="note">Every span, under its parent, on one time axis: one trace from the demo's client
through the FastAPI app to the protected API.{
    f" The first {MAX_RUN_SPANS} of {len(spans)} spans are shown." if left_out else ""}</p>
{_legend(*_LEGEND)}
{run}
</section>
<footer>Generated by <code>python -m mi_credential demo --html</code>.</footer>
</main>
</body>
</html>
"""


__all__ = ["MAX_ACQUISITIONS", "MAX_RUN_SPANS", "render_html"]
