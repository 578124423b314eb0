"""``python -m mi_credential demo``: run as users run it (a subprocess) and in process.

The report must fit 100 columns, hold the span tree and a summary of each metric (every series
with ``--verbose``) and end with what to try next; the Prometheus exposition served
while the demo runs must hold every metric (and label) the Grafana dashboard queries (those of
its shared token cache row: the exposition of credentials that share a cache); the OTLP export
must reach a collector; and nothing printed, traced or measured may carry a secret.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.trace import SpanKind
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

import mi_credential._constants as constants
from mi_credential import ManagedIdentityCredential, telemetry
from mi_credential.emulator import Emulator
from mi_credential_demo import Demo, DemoOptions, _services
from mi_credential_demo._steps import CONCURRENT_CALLERS

from .conftest import register_emulator

ROOT = Path(__file__).parents[1]
DASHBOARD = ROOT / "samples" / "observability" / "grafana" / "mi-credential-dashboard.json"
# The dashboard's row of shared cache panels, whose metrics only credentials sharing a cache record.
SHARED_CACHE_ROW = "Shared token cache"
SOURCES = ("IMDS", "App Service", "Azure Arc", "Service Fabric", "Azure ML", "Cloud Shell",
           "workload identity")
METRICS = (
    "http.client.request.duration",
    "mi_credential.token.acquisition.duration",
    "mi_credential.token.coalesced_waiters",
    "mi_credential.token.refreshes",
    "mi_credential.token.requests",
    "mi_credential.token.time_to_expiry",
)
# A bound on waits for the demo, so that a hang fails the test: the acceptance criterion is
# that the demo exits within 60 s.
DEMO_BOUND = 60.0
WIDTH = 100
DURATION = r" +[\d.]+ (?:ms|s|µs)  "


def run_cli(
    *args: str, timeout: float = DEMO_BOUND, **kwargs: Any
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-W", "error", "-m", "mi_credential", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        **kwargs,
    )


def section(report: str, title: str) -> list[str]:
    """The lines of a report section: from its title to the next blank line."""
    lines = report.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(title))
    end = next((i for i in range(start + 1, len(lines)) if not lines[i].strip()), len(lines))
    return lines[start:end]


def unwrapped(lines: list[str]) -> list[str]:
    """``lines`` with each line indented more than 2 columns past the one above (it goes on
    that one) joined to it."""
    joined: list[str] = []
    for line in lines:
        indent = len(line) - len(line.lstrip())
        if joined and indent > len(joined[-1]) - len(joined[-1].lstrip()) + 2:
            joined[-1] += " " + line.strip()
        else:
            joined.append(line)
    return joined


def assert_fits(report: str) -> None:
    wide = [line for line in report.splitlines() if len(line) > WIDTH]
    assert not wide, f"{len(wide)} lines wider than {WIDTH} columns, the first: {wide[0]!r}"


def assert_ends_with_next(report: str) -> None:
    """The report's last section is "Next:", with the emulator, the samples and the dashboard."""
    last = report.rstrip().split("\n\n")[-1]
    assert last.startswith("Next:\n"), last
    assert "python -m mi_credential emulate" in last
    assert "samples/ " in last and "samples/observability/" in last
    assert "python -m mi_credential demo --otlp http://localhost:4318" in last


# -- the demo as a user runs it -------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo_run() -> subprocess.CompletedProcess[str]:
    return run_cli("demo")


def test_the_demo_exits_0_and_shows_every_step(
    demo_run: subprocess.CompletedProcess[str],
) -> None:
    assert demo_run.returncode == 0, demo_run.stdout + demo_run.stderr
    out = demo_run.stdout
    for label in SOURCES:
        row = next(line for line in out.splitlines() if line.strip().startswith(label))
        assert "cache hit" in row and "aud=https://storage.azure.com" in row, row
    assert f"{CONCURRENT_CALLERS} concurrent callers, cold cache: 1 request to IMDS" in out
    assert "IMDS throttled (429, retry-after-ms: 200): answers [429, 200]" in out
    assert "An identity not assigned to this VM: CredentialUnavailableError" in out
    assert "Orders API called without a token: 401" in out
    assert out.count("GET /orders -> 200, 2 orders") == 4  # two via FastAPI, two via azure-core
    assert "GET /health/identity -> ready=True, source=app_service" in out
    assert "token requests to Microsoft Entra ID: 1" in out
    assert "\nResult: OK, every step worked.\n" in out
    assert_ends_with_next(out)
    assert "FAILED" not in out
    assert "eyJ" not in out + demo_run.stderr  # no JWT (header or payload) is printed
    assert "Traceback" not in demo_run.stderr


def test_the_report_fits_100_columns_and_sums_up_the_metrics(
    demo_run: subprocess.CompletedProcess[str],
) -> None:
    out = demo_run.stdout
    assert_fits(out)
    summary = section(out, "Metrics (")
    assert re.fullmatch(
        r"Metrics \(6 instruments, \d+ series; every series: --verbose\)", summary[0]
    ), summary[0]
    digests = {line.split()[0]: " ".join(line.split()[1:]) for line in unwrapped(summary[1:])}
    assert set(digests) == set(METRICS)
    assert re.fullmatch(r"\d+ get_token calls: \d+ hit, \d+ miss; 1 failed",
                        digests["mi_credential.token.requests"])
    assert re.fullmatch(r"\d+ acquisitions, 1 failed; mean \S+ \S+, max \S+ \S+",
                        digests["mi_credential.token.acquisition.duration"])
    assert digests["mi_credential.token.coalesced_waiters"] == (
        f"{CONCURRENT_CALLERS - 1} callers joined an acquisition in flight"
    )
    assert re.search(r": 200 \(\d+\), 400, 401, 429$", digests["http.client.request.duration"])
    # The raw series are for --verbose only.
    assert "Metric values" not in out
    assert "identity.kind=system_assigned" not in out


def test_the_report_has_the_span_tree(demo_run: subprocess.CompletedProcess[str]) -> None:
    tree = section(demo_run.stdout, "Span tree")
    count = int(re.fullmatch(r"Span tree \((\d+) spans\)", tree[0]).group(1))  # type: ignore[union-attr]
    rows = [row for row in tree[1:] if re.match(DURATION, row)]  # the others go on a row
    assert len(rows) == count
    assert re.fullmatch(DURATION + "mi-credential demo", rows[0])
    text = "\n".join(tree[1:])
    # Each step is a child of the root; acquisitions and their HTTP attempts nest beneath.
    for step in ("1. The credential, directly", "2. FastAPI app -> Orders API",
                 "3. azure-core pipeline client -> Orders API"):
        assert re.search(rf"^ +[\d.]+ \S+  [├└]─ {re.escape(step)}$", text, re.M), step
    assert re.search(
        r"│  ├─ ManagedIdentityCredential.get_token  imds  miss/initial  2 attempts\n"
        r".*│  │  ├─ GET 127\.0\.0\.1:\d+  -> 429\n"
        r".*│  │  └─ GET 127\.0\.0\.1:\d+  retry 1  -> 200",
        text,
    )
    assert "error CredentialUnavailableError" in text
    # One request, traced from the demo's client through the app to the protected API.
    assert re.search(
        r"├─ GET /orders to the FastAPI app  -> 200\n"
        r".*│  └─ FastAPI app: GET /orders  -> 200\n"
        r".*│     └─ GET /orders to the Orders API \(aiohttp, signed\)  -> 200\n"
        r".*│        └─ Orders API: GET /orders  -> 200",
        text,
    )
    # The azure-core call that needed a token: the acquisition is a child of the call.
    assert re.search(
        r"├─ GET /orders \(azure-core pipeline\)  -> 200\n"
        r".*│  ├─ ManagedIdentityCredential.get_token  workload_identity  miss/initial",
        text,
    )


@pytest.fixture(scope="module")
def verbose_run() -> subprocess.CompletedProcess[str]:
    return run_cli("demo", "--verbose")


def test_verbose_adds_the_metric_values(
    demo_run: subprocess.CompletedProcess[str], verbose_run: subprocess.CompletedProcess[str]
) -> None:
    assert verbose_run.returncode == 0, verbose_run.stdout + verbose_run.stderr
    assert_fits(verbose_run.stdout)
    assert_ends_with_next(verbose_run.stdout)
    assert "every series below" in verbose_run.stdout
    lines = section(verbose_run.stdout, "Metric values")
    text = "\n".join(unwrapped(lines[1:]))
    for name in METRICS:
        assert re.search(rf"^   {re.escape(name)} \(", text, re.M), name
    assert re.search(
        rf"^     {CONCURRENT_CALLERS - 1} +identity\.kind=system_assigned source=imds$", text, re.M
    )
    assert re.search(
        r"^     1 +error\.type=CredentialUnavailableError identity\.kind=client_id "
        r"outcome=error refresh\.reason=initial source=imds token\.origin=endpoint$",
        text,
        re.M,
    )
    assert re.search(r"^     24\.00 h +identity\.kind=system_assigned "
                     r"resource=api://orders-api source=app_service$", text, re.M)
    assert re.search(r"^     count=1 mean=\S+ max=\S+ +error\.type=429 ", text, re.M)
    # The summaries above the tree, printed without --verbose too, are read from the same
    # metrics.
    latency = section(demo_run.stdout, "Acquisition latency by source")
    sources = {line.split()[0] for line in latency[2:]}
    assert sources == {"imds", "app_service", "azure_arc", "service_fabric", "azure_ml",
                       "cloud_shell", "workload_identity"}
    imds = next(line for line in latency if line.split()[0] == "imds").split()
    assert imds[1:3] == ["4", "1"]  # four acquisitions, one of which failed
    cache = "\n".join(section(demo_run.stdout, "Cache"))
    assert f"{CONCURRENT_CALLERS - 1} of which joined one already in flight" in cache


# -- in process: the structure behind the report, and no secret anywhere -------------------------


async def test_in_process_spans_link_up_and_nothing_leaks() -> None:
    arc_directory = constants.ARC_KEY_DIRECTORY
    out = io.StringIO()
    demo = Demo(out=out)
    code = await asyncio.wait_for(demo.run(), DEMO_BOUND)
    assert demo.emulator is not None
    register_emulator(demo.emulator)  # the secret scan covers every log record too
    report = out.getvalue()
    assert code == 0, report
    assert arc_directory == constants.ARC_KEY_DIRECTORY  # the platform default is left alone

    assert demo.telemetry is not None
    spans = demo.telemetry.finished_spans()
    by_id = {s.context.span_id: s for s in spans}

    def parent(name: str) -> str:
        span = next(s for s in spans if s.name == name)
        assert span.parent is not None
        return by_id[span.parent.span_id].name

    assert parent("1. The credential, directly") == "mi-credential demo"
    assert parent("FastAPI app: GET /orders") == "GET /orders to the FastAPI app"
    assert (parent("GET /orders to the Orders API (aiohttp, signed)")
            == "FastAPI app: GET /orders")
    roots = [s for s in spans if s.parent is None]
    assert [s.name for s in roots] == ["mi-credential demo"]
    assert len({s.context.trace_id for s in spans}) == 1  # one trace, across three servers
    warmups = [
        s for s in spans
        if s.name == "ManagedIdentityCredential.get_token"
        and (s.attributes or {}).get("mi_credential.source") == "app_service"
        and by_id[s.parent.span_id].name == "2. FastAPI app -> Orders API"  # type: ignore[union-attr]
    ]
    assert len(warmups) == 1  # the middleware's warm-up at uvicorn's startup
    servers = [s for s in spans if s.kind is SpanKind.SERVER]
    assert {s.name for s in servers} == {"FastAPI app: GET /orders", "Orders API: GET /orders"}

    secrets = [s for s in demo.secrets if s]
    assert secrets and any(s.startswith("eyJ") for s in secrets)  # tokens were handed out
    recorded = [report]
    for span in spans:
        recorded.append(f"{span.name} {dict(span.attributes or {})}")
        recorded += [f"{e.name} {dict(e.attributes or {})}" for e in span.events]
    data = demo.telemetry.collect()
    assert data is not None
    recorded.append(data.to_json())
    for text in recorded:
        for secret in secrets:
            assert secret not in text


async def test_a_failing_step_is_reported_and_the_others_still_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The Orders API now expects another audience, so it refuses every token it is sent: the
    two steps that call it fail, the first still works, the report is still printed."""
    monkeypatch.setattr(_services, "ORDERS_AUDIENCE", "api://another-api")
    out = io.StringIO()
    demo = Demo(out=out)
    code = await asyncio.wait_for(demo.run(), DEMO_BOUND)
    assert demo.emulator is not None
    register_emulator(demo.emulator)
    report = out.getvalue()
    assert code == 1
    assert demo.results == {
        "1. The credential, directly": True,
        "2. FastAPI app -> Orders API": False,
        "3. azure-core pipeline client -> Orders API": False,
    }
    # The app's answer to the demo's client, then the API's own answer through azure-core
    # (messages are wrapped to the terminal's width).
    flat = " ".join(report.split())
    assert (
        'FAILED: DemoError: GET /orders answered 502: {"detail":"The Orders API answered 401."}'
        in flat
    )
    assert (
        'FAILED: DemoError: GET /orders answered 401: {"error": "unauthorized", "reason": '
        '"InvalidAudienceError"}' in flat
    )
    assert "Span tree (" in report and "Metrics (" in report
    assert (
        "\nResult: FAILED (2. FastAPI app -> Orders API; 3. azure-core pipeline client -> "
        "Orders API)\n" in report
    )
    assert_fits(report)
    assert_ends_with_next(report)


async def test_holding_keeps_calling_until_the_time_is_up(tmp_path: Path) -> None:
    out = io.StringIO()
    page = tmp_path / "report.html"
    demo = Demo(DemoOptions(hold=1.5, html=str(page)), out=out)
    code = await asyncio.wait_for(demo.run(), DEMO_BOUND)
    assert demo.emulator is not None
    register_emulator(demo.emulator)
    report = out.getvalue()
    assert code == 0, report
    assert "Holding for 1.5 s (Ctrl-C ends it)" in report
    assert "Stopped holding." in report
    assert_fits(report)
    # The page is written with the report, and again with what holding added.
    flat = " ".join(report.split())  # a long path goes on a line of its own
    assert flat.index(f"HTML report: {page}") < flat.index("Holding for")
    assert flat.index(f"HTML report (with the hold): {page}") > flat.index("Stopped holding.")
    assert "hold: a round of calls" in page.read_text(encoding="utf-8")
    assert demo.telemetry is not None
    spans = demo.telemetry.finished_spans()
    rounds = [s for s in spans if s.name == "hold: a round of calls"]
    assert rounds
    by_id = {s.context.span_id: s for s in spans}
    calls = {
        s.name for s in spans if s.parent is not None and by_id[s.parent.span_id] in rounds
    }
    assert calls == {"GET /orders to the FastAPI app", "GET /orders (azure-core pipeline)"}


# -- the Prometheus exposition, scraped while the demo runs, against the dashboard's queries -----


def dashboard_panels() -> list[tuple[str, dict[str, Any]]]:
    """Every panel that is not a row, with the title of the row it is in ("" above the first
    row). A row's panels follow it, or are inside it when it is collapsed."""
    placed: list[tuple[str, dict[str, Any]]] = []
    row = ""
    for panel in json.loads(DASHBOARD.read_text(encoding="utf-8"))["panels"]:
        if panel["type"] == "row":
            row = panel["title"]
            placed.extend((row, inner) for inner in panel.get("panels", []))
        else:
            placed.append((row, panel))
    return placed


def dashboard_queries(row: str = "") -> list[tuple[str, str]]:
    """``(expr, legendFormat)`` of every target of every panel in ``row``."""
    return [
        (target["expr"], target.get("legendFormat", ""))
        for in_row, panel in dashboard_panels()
        if in_row == row
        for target in panel.get("targets", [])
    ]


def test_the_dashboards_panels_have_unique_ids_and_do_not_overlap() -> None:
    panels = json.loads(DASHBOARD.read_text(encoding="utf-8"))["panels"]
    everything = [*panels, *(inner for panel in panels for inner in panel.get("panels", []))]
    ids = [panel["id"] for panel in everything]
    assert len(ids) == len(set(ids)), ids
    cells: dict[tuple[int, int], int] = {}
    for panel in everything:
        box = panel["gridPos"]
        assert box["x"] >= 0 and box["x"] + box["w"] <= 24, panel["title"]
        for x in range(box["x"], box["x"] + box["w"]):
            for y in range(box["y"], box["y"] + box["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps panel {cells[(x, y)]}"
                cells[(x, y)] = panel["id"]
    assert {row for row, _ in dashboard_panels()} == {"", SHARED_CACHE_ROW}


_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset",
             "and", "or", "unless"}
Selector = tuple[str, list[tuple[str, str, str]]]


def parse_promql(expr: str) -> tuple[list[Selector], set[str]]:
    """The metric selectors (name and label matchers) and the grouping labels of ``expr``."""
    text = re.sub(r"\[[^\]]*\]", "", expr)  # range selectors: [5m], [$__rate_interval]
    grouping: set[str] = set()
    for match in re.finditer(r"\b(?:by|without)\s*\(([^)]*)\)", text):
        grouping |= {label.strip() for label in match.group(1).split(",") if label.strip()}
    text = re.sub(r"\b(?:by|without)\s*\([^)]*\)", " ", text)
    selectors: list[Selector] = []
    for match in re.finditer(
        r"(?<![\w$.])([a-zA-Z_:][\w:]*)\s*(\{([^}]*)\})?(\s*\()?", text
    ):
        name, _, matchers, call = match.groups()
        if call or name in _KEYWORDS:
            continue  # a function or aggregation, or a keyword
        parsed = re.findall(r'([a-zA-Z_]\w*)\s*(=~|!~|!=|=)\s*"([^"]*)"', matchers or "")
        selectors.append((name, parsed))
    return selectors, grouping


def test_the_promql_parser() -> None:
    selectors, grouping = parse_promql(
        'histogram_quantile(0.95, sum by (le, src) (rate(a_bucket{x="1", y=~"p|q"}[5m]))) '
        "/ on() sum(rate(b_total[$__rate_interval])) * 60"
    )
    assert selectors == [("a_bucket", [("x", "=", "1"), ("y", "=~", "p|q")]), ("b_total", [])]
    assert grouping == {"le", "src"}
    # A series that first appears within the interval, counted from zero (the dashboard's form).
    selectors, grouping = parse_promql(
        'sum by (src) ((c_total{x="1"} unless c_total{x="1"} offset $__rate_interval) '
        '/ ($__rate_interval_ms / 1000) or rate(c_total{x="1"}[$__rate_interval])) * 60'
    )
    assert selectors == [("c_total", [("x", "=", "1")])] * 3
    assert grouping == {"src"}


def matches(labels: dict[str, str], matchers: list[tuple[str, str, str]]) -> bool:
    for label, op, value in matchers:
        actual = labels.get(label, "")
        ok = {
            "=": actual == value,
            "!=": actual != value,
            "=~": re.fullmatch(value, actual) is not None,
            "!~": re.fullmatch(value, actual) is None,
        }[op]
        if not ok:
            return False
    return True


@asynccontextmanager
async def demo_process(*args: str) -> AsyncIterator[tuple[asyncio.subprocess.Process, list[str]]]:
    """The demo in a subprocess; yields it and the lines it printed so far (read on demand)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-W", "error", "-m", "mi_credential", "demo", *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        yield process, []
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def read_until(
    process: asyncio.subprocess.Process, lines: list[str], prefix: str
) -> str:
    assert process.stdout is not None
    while True:
        raw = await asyncio.wait_for(process.stdout.readline(), DEMO_BOUND)
        assert raw, "the demo ended early:\n" + "\n".join(lines)
        line = raw.decode().rstrip("\n")
        lines.append(line)
        if line.lstrip().startswith(prefix):
            return line


async def test_every_metric_the_dashboard_queries_is_in_the_demos_exposition() -> None:
    async with demo_process("--prometheus-port", "0", "--hold", "45") as (process, lines):
        url = (await read_until(process, lines, "Prometheus")).split()[-1]
        await read_until(process, lines, "Holding for")  # the report is out: every step ran
        async with aiohttp.ClientSession() as session, session.get(url) as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/plain")
            exposition = await response.text()
        process.send_signal(signal.SIGINT)  # ends the hold; the demo closes and exits 0
        await asyncio.wait_for(process.wait(), DEMO_BOUND)
        assert process.stdout is not None and process.stderr is not None
        rest = (await process.stdout.read()).decode()
        errors = (await process.stderr.read()).decode()
    assert process.returncode == 0, "\n".join(lines) + rest + errors
    assert "Stopped holding." in rest

    queries = dashboard_queries()
    assert len(queries) >= 6
    check_queries(queries, exposition)


def exposition_samples(exposition: str) -> dict[str, list[dict[str, str]]]:
    """The labels of each sample of a Prometheus exposition, by sample name."""
    samples: dict[str, list[dict[str, str]]] = {}
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(dict(sample.labels))
    return samples


def check_queries(queries: list[tuple[str, str]], exposition: str) -> None:
    """Every metric, label matcher and grouping label of ``queries`` is in ``exposition``, and
    their legends name only labels they group by."""
    samples = exposition_samples(exposition)
    for expr, legend in queries:
        selectors, grouping = parse_promql(expr)
        assert selectors, f"no metric found in {expr}"
        available: set[str] = set()
        for name, matchers in selectors:
            assert name in samples, f"{name} (dashboard) is not in the exposition"
            assert any(matches(labels, matchers) for labels in samples[name]), (
                f"no series of {name} matches {matchers}"
            )
            available |= {label for labels in samples[name] for label in labels}
        missing = grouping - available
        assert not missing, f"{expr} groups by labels no series has: {missing}"
        if grouping:
            legend_labels = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", legend))
            assert legend_labels <= grouping, f"legend {legend!r} names labels not grouped by"


async def test_the_shared_cache_rows_queries_match_credentials_that_share_a_cache(
    tmp_path: Path,
) -> None:
    """Three credentials of one identity, sharing a cache, each take their token from a
    different origin: the first from the endpoint (its response held), the second from the
    first's refresh, which it waits for, the third from the stored entry. Their exposition must
    hold every metric and label the shared cache row queries."""
    scope = "https://vault.azure.net/.default"
    registry = CollectorRegistry()  # not the global one: nothing outlives the test
    provider = MeterProvider(metric_readers=[PrometheusMetricReader(registry=registry)])
    waiting = asyncio.Event()

    async def sleep(seconds: float) -> None:  # the second credential's: the lock is held
        waiting.set()
        await asyncio.sleep(seconds)

    async with Emulator() as emulator:  # the real clock: the shared entries' times are real
        register_emulator(emulator)
        options: dict[str, Any] = {
            "environ": emulator.environ("imds"),
            "shared_cache": str(tmp_path / "cache"),
            "meter_provider": provider,
        }
        refresher = ManagedIdentityCredential(**options)
        waiter = ManagedIdentityCredential(**options, sleep=sleep)
        reader = ManagedIdentityCredential(**options)
        try:
            with emulator.hold():
                refreshed = asyncio.ensure_future(refresher.get_token(scope))
                await emulator.wait_for_requests(1)  # the refresher holds the lock
                waited = asyncio.ensure_future(waiter.get_token(scope))
                await asyncio.wait_for(waiting.wait(), DEMO_BOUND)
            tokens = await asyncio.wait_for(asyncio.gather(refreshed, waited), DEMO_BOUND)
            tokens.append(await reader.get_token(scope))
        finally:
            for credential in (refresher, waiter, reader):
                await credential.close()
        assert len({token.token for token in tokens}) == 1
        assert len(emulator.requests) == 1
    exposition = generate_latest(registry).decode()
    provider.shutdown()

    samples = exposition_samples(exposition)
    origins = {
        labels["mi_credential_token_origin"]
        for labels in samples["mi_credential_token_refreshes_total"]
    }
    assert origins == {
        telemetry.ORIGIN_ENDPOINT,
        telemetry.ORIGIN_SHARED_CACHE,
        telemetry.ORIGIN_SHARED_REFRESH,
    }
    assert "mi_credential_shared_cache_lock_waits_total" in samples
    queries = dashboard_queries(SHARED_CACHE_ROW)
    assert len(queries) >= 2
    check_queries(queries, exposition)


# -- OTLP/HTTP to a collector ---------------------------------------------------------------------


class Collector:
    """An OTLP/HTTP receiver on 127.0.0.1 that decodes what it is sent."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.span_names: list[str] = []
        self.metric_names: set[str] = set()
        self.service_names: set[str] = set()

    async def traces(self, request: web.Request) -> web.Response:
        message = ExportTraceServiceRequest.FromString(await request.read())
        for resource_spans in message.resource_spans:
            self.service_names |= {
                a.value.string_value
                for a in resource_spans.resource.attributes
                if a.key == "service.name"
            }
            for scope_spans in resource_spans.scope_spans:
                self.span_names += [span.name for span in scope_spans.spans]
        return web.Response(status=self.status, content_type="application/x-protobuf")

    async def metrics(self, request: web.Request) -> web.Response:
        message = ExportMetricsServiceRequest.FromString(await request.read())
        for resource_metrics in message.resource_metrics:
            for scope_metrics in resource_metrics.scope_metrics:
                self.metric_names |= {metric.name for metric in scope_metrics.metrics}
        return web.Response(status=self.status, content_type="application/x-protobuf")


@asynccontextmanager
async def collector(status: int = 200) -> AsyncIterator[tuple[Collector, str]]:
    receiver = Collector(status)
    app = web.Application()
    app.router.add_post("/v1/traces", receiver.traces)
    app.router.add_post("/v1/metrics", receiver.metrics)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield receiver, f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


async def run_demo_process(*args: str) -> tuple[int, str, str]:
    async with demo_process(*args) as (process, _):
        out, err = await asyncio.wait_for(process.communicate(), DEMO_BOUND)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_otlp_sends_the_spans_and_metrics_to_a_collector() -> None:
    async with collector() as (receiver, url):
        code, out, err = await run_demo_process("--otlp", url)
    assert code == 0, out + err
    match = re.search(r"^OTLP: (\d+) spans and the metrics sent to (\S+) \(1 push\)$", out, re.M)
    assert match and match.group(2) == url, out
    assert int(match.group(1)) == len(receiver.span_names)
    assert receiver.service_names == {"mi-credential-demo"}
    assert "mi-credential demo" in receiver.span_names
    assert receiver.span_names.count("ManagedIdentityCredential.get_token") >= 10
    assert set(METRICS) <= receiver.metric_names


async def test_a_collector_that_refuses_fails_the_demo() -> None:
    async with collector(status=400) as (receiver, url):
        code, out, _ = await run_demo_process("--otlp", url)
    assert code == 1
    assert receiver.span_names  # it was sent, and refused
    assert f"OTLP: sending to {url} failed" in out
    assert "is the collector running?" in out
    assert "\nResult: FAILED (the OTLP export)\n" in out
    assert_fits(out)
    assert_ends_with_next(out)


# -- options, usage and missing dependencies ------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ("--otlp", "ftp://collector"),
        ("--otlp", "localhost:4318"),
        ("--prometheus-port", "http"),
        ("--prometheus-port", "70000"),
        ("--hold", "-1"),
        ("--hold", "nan"),
    ],
)
def test_bad_options_are_usage_errors(args: tuple[str, str]) -> None:
    result = run_cli("demo", *args)
    assert result.returncode == 2
    assert f"argument {args[0]}" in result.stderr


@pytest.mark.parametrize(
    ("module", "args", "package"),
    [
        ("opentelemetry.exporter.otlp.proto.http", ["--otlp", "http://127.0.0.1:9"],
         "opentelemetry-exporter-otlp-proto-http"),
        ("opentelemetry.exporter.prometheus", ["--prometheus-port", "0"],
         "opentelemetry-exporter-prometheus"),
    ],
)
def test_a_missing_exporter_is_exit_code_3(module: str, args: list[str], package: str) -> None:
    code = (
        "import sys\n"
        f"sys.modules[{module!r}] = None  # as if it were not installed\n"
        "from mi_credential._cli import main\n"
        f"raise SystemExit(main(['demo', *{args!r}]))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=DEMO_BOUND,
        check=False,
    )
    assert result.returncode == 3, result.stdout + result.stderr
    assert package in result.stderr
    assert 'pip install "mi-credential[demo]"' in result.stderr
    assert result.stdout == ""  # it stopped before starting anything


@pytest.mark.parametrize("module", ["uvicorn", "fastapi", "opentelemetry.sdk"])
def test_a_missing_demo_dependency_is_exit_code_3(module: str) -> None:
    code = (
        "import sys\n"
        f"sys.modules[{module!r}] = None  # as if it were not installed\n"
        "from mi_credential._cli import main\n"
        "raise SystemExit(main(['demo']))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=DEMO_BOUND,
        check=False,
    )
    assert result.returncode == 3, result.stdout + result.stderr
    # It names what is missing (the module itself or, for a package, its first submodule).
    assert result.stderr.startswith(f"'demo' needs optional dependencies ({module}")
    assert result.stderr.endswith(' is missing): pip install "mi-credential[demo]"\n')
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_help_describes_the_options() -> None:
    result = run_cli("demo", "--help")
    assert result.returncode == 0
    for option in ("--otlp ENDPOINT", "--prometheus-port PORT", "--hold SECONDS", "--verbose",
                   "--html PATH"):
        assert option in result.stdout


def test_a_prometheus_port_in_use_is_one_line_and_leaves_nothing(tmp_path: Path) -> None:
    """Exit 2 with one line on standard error, before anything starts: nothing printed, and no
    emulator directory left in the temporary directory."""
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli(
            "demo", "--prometheus-port", str(port), env={**os.environ, "TMPDIR": str(temporary)}
        )
    assert result.returncode == 2, result.stdout + result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith("mi-credential demo: error: --prometheus-port"), line
    assert str(port) in line and "in use" in line
    assert result.stdout == ""
    assert list(temporary.iterdir()) == []
