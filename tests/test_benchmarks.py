"""``python -m benchmarks --quick`` runs from a clone as the README says. No time is asserted
(the machine is shared): only the figures that are counts, which the benchmarks take from the
endpoint while they measure."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


def test_quick_run_prints_the_table_and_writes_every_figure(tmp_path: Path) -> None:
    figures = tmp_path / "figures.json"
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--json", str(figures)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ratio" in result.stdout and f"figures written to {figures}" in result.stdout
    rows = json.loads(figures.read_text())["rows"]

    groups = {row["group"] for row in rows}
    for expected in (
        "cache hit, IMDS, SDK on",
        "cold acquisition, App Service, SDK off",
        "cold acquisition vs endpoint latency: 20 ms, IMDS, SDK off",
        "memory, IMDS, SDK on",
        "import (fresh interpreter, asyncio loaded)",
        "aiohttp client middleware",
        "azure-core policy: per-request overhead, no-I/O transport",
        "chain fall-through without managed identity: nothing listens",
        "chain fall-through without managed identity: connects hang",
        "shared cache: cold start of 4 worker processes, IMDS, 5 ms endpoint",
        "shared cache: cold start of 8 worker processes, IMDS, 5 ms endpoint",
    ):
        assert expected in groups
    assert any(group.startswith("ASGI middleware") for group in groups)
    assert all(row["ours"] is not None and row["ours"] >= 0 for row in rows)

    # Cold herds: ours makes one request whatever the size and every caller gets its token;
    # the reference makes one per caller.
    herds = [row for row in rows if row["group"].startswith("herd of") and "cold" in row["group"]]
    sizes = set()
    for row in herds:
        match = re.match(r"herd of (\d+) cold callers", row["group"])
        assert match is not None
        size = int(match.group(1))
        sizes.add(size)
        if row["name"].startswith("upstream requests") or row["name"] == "distinct tokens":
            assert row["ours"] == 1
            assert row["baseline"] == size
    assert sizes == {1, 10, 100}

    # Cold starts of worker processes sharing a cache directory: one request between them all,
    # one token for all; the reference's processes make one request each.
    starts = [row for row in rows if row["group"].startswith("shared cache: cold start of")]
    sizes = set()
    for row in starts:
        match = re.match(r"shared cache: cold start of (\d+) worker processes", row["group"])
        assert match is not None
        size = int(match.group(1))
        sizes.add(size)
        if row["name"].startswith(("endpoint requests (", "distinct tokens")):
            assert row["ours"] == 1, row
            assert row["baseline"] == size, row
        elif row["name"].startswith("endpoint requests per process"):
            assert row["ours"] == pytest.approx(1 / size), row
            assert row["baseline"] == pytest.approx(1), row
    assert sizes == {4, 8}
