"""The HTML report's charts, as inline SVG markup: a span waterfall (bars placed by their start
and end times) and a dot plot of acquisition latency per source on a logarithmic axis.

Colours come from the page's style sheet, through the classes set here; every text is escaped.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

from ._report import duration

#: Approximate advance of one character of the charts' 11 px text, to shorten labels.
_CHAR_PX = 5.9
_AXIS = 22


@dataclass(frozen=True)
class Bar:
    """One span of a waterfall.

    Attributes:
        label: The text left of the bars.
        start: Seconds from the waterfall's origin to the span's start.
        end: Seconds from the origin to its end.
        kind: Its class in the style sheet (``acquisition``, ``attempt``, ``client``...).
        depth: How far its label is indented (its depth in the tree shown).
        status: ``""``, ``"refused"`` (an HTTP answer of 400 or more) or ``"error"``.
        detail: The tooltip.
    """

    label: str
    start: float
    end: float
    kind: str
    depth: int = 0
    status: str = ""
    detail: str = ""


@dataclass(frozen=True)
class SourceTimes:
    """The acquisitions of one hosting source: each one's seconds, and whether it failed."""

    source: str
    seconds: tuple[float, ...]
    failed: tuple[bool, ...]


def _n(value: float) -> str:
    """A coordinate, short."""
    return f"{value:.1f}".removesuffix(".0")


def _short(text: str, pixels: float) -> str:
    chars = max(int(pixels / _CHAR_PX), 4)
    return text if len(text) <= chars else text[: chars - 1] + "…"


def tick_label(seconds: float) -> str:
    """``100 µs``, ``2 ms``, ``1.5 s``: an axis label."""
    if seconds == 0:
        return "0"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.3g} µs"
    if seconds < 1.0:
        return f"{seconds * 1e3:.3g} ms"
    return f"{seconds:.3g} s"


def linear_ticks(total: float, most: int = 6) -> list[float]:
    """Round values from 0 to ``total``, at most ``most`` + 1 of them."""
    if total <= 0:
        return [0.0]
    raw = total / most
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    return [i * step for i in range(int(total / step + 1e-9) + 1)]


def waterfall(
    bars: Sequence[Bar],
    *,
    width: int,
    label_width: int,
    row: int = 20,
    css: str = "waterfall",
    waits: bool = False,
) -> str:
    """The bars on one time axis from 0 to the latest end, one row each, in the order given.

    With ``waits``, the time between two bars of the same depth that follow each other (the
    wait before a retry) is drawn and labelled when it is a tenth of the axis or more.
    """
    total = max((bar.end for bar in bars), default=0.0) or 1e-6
    plot_w = width - label_width - 14
    scale = plot_w / total
    height = _AXIS + row * len(bars) + 4
    out = [
        f'<svg class="{css}" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'role="img" aria-label="span waterfall, {len(bars)} spans">'
    ]
    for tick in linear_ticks(total, max(2, plot_w // 60)):
        x = label_width + tick * scale
        anchor = "end" if x > width - 30 else "middle"
        out.append(
            f'<line class="grid" x1="{_n(x)}" y1="{_AXIS - 6}" x2="{_n(x)}" y2="{height}"/>'
            f'<text class="tick" x="{_n(x)}" y="12" text-anchor="{anchor}">'
            f"{escape(tick_label(tick))}</text>"
        )
    previous: dict[int, Bar] = {}
    for index, bar in enumerate(bars):
        y = _AXIS + index * row
        x = label_width + bar.start * scale
        w = max((bar.end - bar.start) * scale, 1.5)
        indent = 4 + bar.depth * 12
        classes = " ".join(filter(None, ("span", bar.kind, bar.status)))
        tip = escape(bar.detail or bar.label)
        out.append(
            f'<g class="{classes}"><title>{tip}</title>'
            f'<text class="label" x="{indent}" y="{_n(y + row * 0.68)}">'
            f"{escape(_short(bar.label, label_width - indent - 8))}</text>"
            f'<rect class="bar" x="{_n(x)}" y="{_n(y + 4)}" width="{_n(w)}" '
            f'height="{row - 8}" rx="2"/>'
        )
        # The duration after the bar, or inside its end, or (a short bar at the end) before it.
        text, baseline = escape(duration(bar.end - bar.start)), _n(y + row * 0.68)
        before_bar = 0.0  # the room the duration takes before the bar
        if x + w + 54 < width:
            out.append(f'<text class="value" x="{_n(x + w + 4)}" y="{baseline}">{text}</text>')
        elif w >= 54:
            out.append(f'<text class="value inside" x="{_n(x + w - 4)}" y="{baseline}" '
                       f'text-anchor="end">{text}</text>')
        else:
            before_bar = 8 + len(text) * _CHAR_PX
            out.append(f'<text class="value" x="{_n(x - 4)}" y="{baseline}" '
                       f'text-anchor="end">{text}</text>')
        out.append("</g>")
        before = previous.get(bar.depth)
        if waits and before is not None and (bar.start - before.end) >= total / 10:
            x0 = label_width + before.end * scale
            x1 = max(x - before_bar, x0)
            out.append(
                f'<g class="wait"><line x1="{_n(x0)}" y1="{_n(y + row / 2)}" x2="{_n(x1)}" '
                f'y2="{_n(y + row / 2)}"/><text x="{_n((x0 + x1) / 2)}" y="{_n(y + row / 2 - 3)}" '
                f'text-anchor="middle">waited {escape(duration(bar.start - before.end))}</text></g>'
            )
        previous[bar.depth] = bar
    out.append("</svg>")
    return "".join(out)


def latency_chart(rows: Sequence[SourceTimes], *, width: int, row: int = 30) -> str:
    """One row per source: a dot per acquisition (``failed`` ones in the error colour), a band
    from the fastest to the slowest, a line at the mean, and the figures at the right; on a
    logarithmic time axis of whole decades."""
    times = [s for r in rows for s in r.seconds if s > 0] or [1e-3]
    low = 10 ** math.floor(math.log10(min(times)))
    high = 10 ** math.ceil(math.log10(max(times)))
    if high <= low:
        high = low * 10
    label_w, stats_w = 150, 250
    plot_w = width - label_w - stats_w
    span = math.log10(high) - math.log10(low)

    def x(seconds: float) -> float:
        return label_w + (math.log10(max(seconds, low)) - math.log10(low)) / span * plot_w

    height = _AXIS + row * len(rows) + 6
    out = [
        f'<svg class="latency" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'role="img" aria-label="acquisition latency per source, {len(rows)} sources">'
    ]
    decade = low
    while decade <= high * 1.0001:
        for step in (1, 2, 5):
            tick = decade * step
            if tick > high * 1.0001:
                break
            major = step == 1
            out.append(
                f'<line class="{"grid" if major else "grid minor"}" x1="{_n(x(tick))}" '
                f'y1="{_AXIS - 6}" x2="{_n(x(tick))}" y2="{height}"/>'
            )
            if major:
                out.append(f'<text class="tick" x="{_n(x(tick))}" y="12" text-anchor="middle">'
                           f"{escape(tick_label(tick))}</text>")
        decade *= 10
    for index, source in enumerate(rows):
        mid = _AXIS + index * row + row / 2
        count, failed = len(source.seconds), sum(source.failed)
        mean = sum(source.seconds) / count if count else 0.0
        fastest, slowest = min(source.seconds, default=0.0), max(source.seconds, default=0.0)
        stats = f"{count} acquisition{'s' if count != 1 else ''}"
        stats += f" ({failed} failed)" if failed else ""
        stats += f" · mean {duration(mean)}"
        out.append(
            f'<g class="source" data-source="{escape(source.source)}">'
            f'<text class="label" x="4" y="{_n(mid + 4)}">{escape(source.source)}</text>'
            f'<rect class="range" x="{_n(x(fastest) - 5)}" y="{_n(mid - 8)}" '
            f'width="{_n(x(slowest) - x(fastest) + 10)}" height="16" rx="8"><title>'
            f"{escape(f'{duration(fastest)} to {duration(slowest)}')}</title></rect>"
            f'<line class="mean" x1="{_n(x(mean))}" y1="{_n(mid - 10)}" x2="{_n(x(mean))}" '
            f'y2="{_n(mid + 10)}"><title>mean {escape(duration(mean))}</title></line>'
        )
        for n, (seconds, bad) in enumerate(zip(source.seconds, source.failed, strict=True)):
            out.append(
                f'<circle class="dot{" error" if bad else ""}" cx="{_n(x(seconds))}" '
                f'cy="{_n(mid + (n % 3 - 1) * 3)}" r="4"><title>{escape(duration(seconds))}'
                f"{' (failed)' if bad else ''}</title></circle>"
            )
        out.append(f'<text class="stats" x="{width - stats_w + 12}" y="{_n(mid + 4)}">'
                   f"{escape(stats)}</text></g>")
    out.append("</svg>")
    return "".join(out)


__all__ = ["Bar", "SourceTimes", "latency_chart", "linear_ticks", "tick_label", "waterfall"]
