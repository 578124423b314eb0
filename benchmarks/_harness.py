"""What every benchmark module shares: timing, rows, the report.

Each ``bench_*.py`` module exposes ``async def run(quick: bool) -> list[Row]`` and can be run on
its own (``python -m benchmarks.bench_x``); ``python -m benchmarks`` runs them all in one process
and prints one table. Figures are compared as ratios measured in the same run, never against
absolute thresholds: the machine is shared and noisy.
"""

from __future__ import annotations

import asyncio
import json
import platform
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Row:
    """One comparison: our figure, the baseline's, and their ratio (ours / baseline)."""

    group: str
    name: str
    ours: float
    baseline: float | None
    unit: str
    baseline_name: str = "azure-identity"
    target: str = ""
    """The acceptance bound on the ratio, as text (for example ``<= 1.03``), if there is one."""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        if self.baseline in (None, 0):
            return None
        assert self.baseline is not None
        return self.ours / self.baseline


async def time_per_call(
    call: Callable[[], Awaitable[Any]], *, batch: int = 2000, batches: int = 15, warmup: int = 200
) -> float:
    """Median, over ``batches``, of the mean seconds per awaited ``call()`` in a batch."""
    for _ in range(warmup):
        await call()
    samples = []
    for _ in range(batches):
        start = time.perf_counter()
        for _ in range(batch):
            await call()
        samples.append((time.perf_counter() - start) / batch)
    return statistics.median(samples)


async def interleaved(
    calls: dict[str, Callable[[], Awaitable[Any]]], *, batch: int, batches: int, warmup: int = 50
) -> dict[str, float]:
    """Like :func:`time_per_call` for several contenders, alternating batches between them so
    that drifting machine load affects all of them alike. Returns median seconds per call."""
    for call in calls.values():
        for _ in range(warmup):
            await call()
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(batches):
        for name, call in calls.items():
            start = time.perf_counter()
            for _ in range(batch):
                await call()
            samples[name].append((time.perf_counter() - start) / batch)
    return {name: statistics.median(values) for name, values in samples.items()}


def format_value(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "s":
        if value < 1e-3:
            return f"{value * 1e6:.2f} µs"
        return f"{value * 1e3:.2f} ms" if value < 1 else f"{value:.2f} s"
    if unit == "B":
        return f"{value / 1024:.1f} KiB" if value >= 1024 else f"{value:.0f} B"
    return f"{value:g} {unit}".strip()


def print_table(rows: list[Row]) -> None:
    print(f"\n{'benchmark':<58} {'ours':>12} {'baseline':>12} {'ratio':>8}  target")
    group = None
    for row in rows:
        if row.group != group:
            group = row.group
            print(f"\n{group}")
        ratio = "-" if row.ratio is None else f"{row.ratio:.3f}x"
        name = f"  {row.name}"
        if row.baseline is not None:
            name += f" (vs {row.baseline_name})"
        print(
            f"{name:<58} {format_value(row.ours, row.unit):>12} "
            f"{format_value(row.baseline, row.unit):>12} {ratio:>8}  {row.target}"
        )


def write_json(rows: list[Row], path: str) -> None:
    payload = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "rows": [{**asdict(row), "ratio": row.ratio} for row in rows],
    }
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(payload, handle, indent=2)


def main(run: Callable[[bool], Coroutine[Any, Any, list[Row]]]) -> None:
    """Entry point for one benchmark module: ``--quick`` for a fast smoke run."""
    quick = "--quick" in sys.argv
    rows = asyncio.run(run(quick))
    print_table(rows)
