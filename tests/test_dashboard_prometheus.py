"""The shipped Grafana dashboard on a real Prometheus.

Prometheus (the ``prometheus`` binary; Debian: ``apt-get install prometheus``) scrapes three
runs of the exporter sample, ``samples/observability/prometheus_exporter.py``, run as users run
it, each pointed at one emulator by its environment: two IMDS processes that share a token
cache, the second waiting for the first's refresh of a token, with a burst of concurrent
callers; and a Cloud Shell process whose first request fails and whose tokens are refreshed.
Every expression of every panel, its Grafana variables made concrete, must then return what the
emulator's record of requests says happened: every source, every error type, every origin.

Most series appear with their first value already counted (the first acquisitions come before
the first scrape), which Prometheus' ``rate()`` alone does not see; the panels count such a
series from zero, and a second check shows it around the failure's series: counted in a window
it first appears in, and not again in a later window.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import shutil
import signal
import socket
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest

from mi_credential.emulator import Emulator, Fault

from .conftest import register_emulator

PROMETHEUS = shutil.which("prometheus")
pytestmark = pytest.mark.skipif(
    PROMETHEUS is None,
    reason="needs the prometheus binary on PATH (Debian/Ubuntu: apt-get install prometheus)",
)

ROOT = Path(__file__).parents[1]
SAMPLE = ROOT / "samples" / "observability" / "prometheus_exporter.py"
DASHBOARD = ROOT / "samples" / "observability" / "grafana" / "mi-credential-dashboard.json"

MANAGEMENT = "https://management.azure.com/.default"
VAULT = "https://vault.azure.net/.default"
STORAGE = "https://storage.azure.com/.default"
CALLERS = 4  # the first IMDS process's concurrent callers per scope: a coalesced burst
INTERVAL = "0.2"  # seconds between the samples' rounds of calls
REFRESH_IN = 1  # seconds: the Cloud Shell tokens ask to be refreshed soon
WINDOW = 300  # seconds: the panels' interval, over the whole run
BOUND = 30.0  # seconds any one wait may take before the test fails


# -- processes ------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


class Process:
    """A subprocess whose output is read at the end; stopped (and awaited) by :meth:`stop`."""

    def __init__(self, name: str, process: asyncio.subprocess.Process) -> None:
        self.name = name
        self.process = process
        self.stdout: list[str] = []
        self.stderr = ""

    async def read_line(self) -> str:
        assert self.process.stdout is not None
        raw = await asyncio.wait_for(self.process.stdout.readline(), BOUND)
        if not raw:
            await self.stop()
            pytest.fail(f"{self.name} ended early:\n{self.output()}")
        line = raw.decode().rstrip("\n")
        self.stdout.append(line)
        return line

    async def stop(self, sig: int = signal.SIGINT) -> int:
        """Interrupt it (Ctrl+C), or kill it if it does not end within the bound."""
        if self.process.returncode is None:
            self.process.send_signal(sig)
        try:
            out, err = await asyncio.wait_for(self.process.communicate(), BOUND)
        except asyncio.TimeoutError:
            self.process.kill()
            out, err = await self.process.communicate()
        self.stdout += (out or b"").decode().splitlines()
        self.stderr += (err or b"").decode()
        assert self.process.returncode is not None
        return self.process.returncode

    def output(self) -> str:
        return "\n".join(self.stdout) + "\n" + self.stderr


async def start_sample(
    stack: AsyncExitStack, name: str, environ: dict[str, str], *args: str
) -> tuple[Process, int]:
    """The exporter sample, as users run it, with ``environ`` added to this environment; returns
    it and the port it serves /metrics on (it prints where, first)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-W", "error", str(SAMPLE), "--port", "0", "--interval", INTERVAL, *args,
        env={**os.environ, **environ, "PYTHONUNBUFFERED": "1"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    sample = Process(name, process)
    stack.push_async_callback(sample.stop)
    line = await sample.read_line()
    assert line.startswith("Serving mi-credential's metrics at http://127.0.0.1:"), line
    port = urlsplit(line.split()[-1]).port
    assert port is not None
    return sample, port


async def start_prometheus(stack: AsyncExitStack, tmp_path: Path, targets: list[int]) -> str:
    """Prometheus scraping ``targets`` every second, with its own data directory; returns its
    URL once it is ready."""
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
        "scrape_configs:\n  - job_name: sample\n    static_configs:\n"
        f"      - targets: {json.dumps([f'127.0.0.1:{port}' for port in targets])}\n",
        encoding="utf-8",
    )
    address = f"127.0.0.1:{free_port()}"  # free a moment ago: a clash shows in its log
    log = tmp_path / "prometheus.log"
    assert PROMETHEUS is not None
    with log.open("wb") as output:  # a file, not a pipe: nothing here reads it as it runs
        process = await asyncio.create_subprocess_exec(
            PROMETHEUS,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'prometheus-data'}",
            f"--web.listen-address={address}",
            stdout=output,
            stderr=output,
        )
    prometheus = Process("prometheus", process)
    stack.push_async_callback(prometheus.stop, signal.SIGTERM)
    url = f"http://{address}"

    async def ready() -> bool:
        if process.returncode is not None:
            pytest.fail(f"prometheus ended early:\n{log.read_text(errors='replace')}")
        try:
            async with aiohttp.ClientSession() as session, session.get(url + "/-/ready") as r:
                return r.status == 200
        except aiohttp.ClientError:
            return False

    await eventually(ready, "Prometheus to be ready")
    return url


async def eventually(
    check: Callable[[], Awaitable[Any]], what: str, seen: Callable[[], object] = lambda: ""
) -> Any:
    """``check()``'s first true answer, polled until :data:`BOUND` seconds have passed; the
    failure says what was ``seen`` last."""
    deadline = time.monotonic() + BOUND
    while True:
        answer = await check()
        if answer:
            return answer
        if time.monotonic() > deadline:
            pytest.fail(f"waited {BOUND:g} s for {what}; last seen: {seen()}")
        await asyncio.sleep(0.1)


# -- Prometheus' HTTP API and the dashboard ----------------------------------------------------

Series = dict[tuple[tuple[str, str], ...], float]


class Api:
    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self.session = session
        self.url = url

    async def query(self, expr: str, at: float) -> Any:
        params = {"query": expr, "time": f"{at:.3f}"}
        async with self.session.get(self.url + "/api/v1/query", params=params) as response:
            body = await response.json()
        assert body["status"] == "success", f"{expr}: {body}"
        return body["data"]

    async def vector(self, expr: str, at: float, labels: tuple[str, ...] = ()) -> Series:
        """The instant vector ``expr`` at ``at``: ``labels``' values -> value."""
        data = await self.query(expr, at)
        assert data["resultType"] == "vector", expr
        series: Series = {}
        for item in data["result"]:
            key = tuple((label, item["metric"].get(label, "")) for label in labels)
            assert key not in series, f"{expr}: two series for {key}"
            series[key] = float(item["value"][1])
        return series

    async def total(self, expr: str, at: float) -> float:
        return sum((await self.vector(f"sum({expr})", at)).values())


GRAFANA_VARIABLE = re.compile(r"\$\{(\w+)(?::[\w]+)?\}|\$(\w+)|\[\[(\w+)\]\]")


def concrete(expr: str, window: int) -> str:
    """``expr`` with Grafana's variables replaced: every interval and range is ``window``
    seconds. An unknown variable fails the test."""
    values = {
        "__rate_interval": f"{window}s",
        "__rate_interval_ms": str(window * 1000),
        "__interval": f"{window}s",
        "__interval_ms": str(window * 1000),
        "__range": f"{window}s",
        "__range_s": str(window),
        "__range_ms": str(window * 1000),
    }

    def value(match: re.Match[str]) -> str:
        name = next(group for group in match.groups() if group)
        assert name in values, f"${name} (in {expr}) has no concrete value here"
        return values[name]

    return GRAFANA_VARIABLE.sub(value, expr)


def panel_targets() -> dict[int, list[dict[str, Any]]]:
    """The targets of every panel (a row's panels included), by panel id."""
    panels = json.loads(DASHBOARD.read_text(encoding="utf-8"))["panels"]
    every = [*panels, *(inner for panel in panels for inner in panel.get("panels", []))]
    return {panel["id"]: panel["targets"] for panel in every if panel.get("targets")}


def legend_labels(target: dict[str, Any]) -> tuple[str, ...]:
    return tuple(sorted(set(re.findall(r"\{\{\s*(\w+)\s*\}\}", target.get("legendFormat", "")))))


# -- the run -----------------------------------------------------------------------------------


class History:
    """What the samples did, and the Prometheus that scraped them."""

    def __init__(self, samples: list[Process], prometheus: str) -> None:
        self.samples = samples
        self.prometheus = prometheus


async def make_history(stack: AsyncExitStack, emulator: Emulator, tmp_path: Path) -> History:
    """The three samples' calls, the emulator holding and failing requests where it must;
    returns once nothing more will reach the emulator."""
    imds = {**emulator.environ("imds"), "MI_CREDENTIAL_SHARED_CACHE": str(tmp_path / "shared")}
    with emulator.hold():
        # The first IMDS process holds the shared cache's locks while its requests are held;
        # its concurrent callers join the two acquisitions in flight.
        first, first_port = await start_sample(
            stack, "first IMDS sample", imds,
            "--scope", MANAGEMENT, "--scope", VAULT, "--callers", str(CALLERS),
        )
        await emulator.wait_for_requests(2, source="imds")
        # The second asks for the management token (the first holds its lock: it waits) and,
        # in the same round, for storage, whose request thus arrives once the wait has begun.
        second, second_port = await start_sample(
            stack, "second IMDS sample", imds, "--scope", MANAGEMENT, "--scope", STORAGE
        )
        await emulator.wait_for_requests(3, source="imds")
    await emulator.wait_for_responses(3, source="imds")

    # Cloud Shell: its first request fails; the tokens it then gets ask to be refreshed soon.
    emulator.refresh_in = REFRESH_IN
    emulator.add_fault(Fault.status_code(400, source="cloud_shell", times=1))
    cloud, cloud_port = await start_sample(
        stack, "Cloud Shell sample", emulator.environ("cloud_shell"),
        "--scope", MANAGEMENT, "--scope", VAULT,
    )
    prometheus = await start_prometheus(stack, tmp_path, [first_port, second_port, cloud_port])
    await emulator.wait_for_responses(3, source="cloud_shell")  # the failure and both tokens
    emulator.refresh_in = None  # the tokens issued from now on live 24 h: refreshes end
    since = time.time()
    resources = {MANAGEMENT.removesuffix("/.default"), VAULT.removesuffix("/.default")}

    async def refreshed_for_good() -> bool:
        arrived = len(emulator.requests_for("cloud_shell"))
        answered = await emulator.wait_for_responses(arrived, source="cloud_shell")
        last = {r.form_field("resource") for r in answered if r.status == 200 and r.time >= since}
        return last == resources

    await eventually(refreshed_for_good, "the Cloud Shell tokens' last refreshes")
    return History([first, second, cloud], prometheus)


async def figures(api: Api, at: float) -> dict[str, Any]:
    """The raw series the panels summarise, at ``at``: every one appeared within the panels'
    window, so each panel must equal its figure."""
    source = ("mi_credential_source",)
    bucket = "mi_credential_token_acquisition_duration_seconds_bucket"
    requests = "mi_credential_token_requests_total"
    return {
        "quantiles": {
            q: await api.vector(
                f"histogram_quantile({q}, sum by (le, mi_credential_source) ({bucket}))",
                at,
                source,
            )
            for q in (0.5, 0.95, 0.99)
        },
        "acquisitions": await api.vector(
            "sum by (mi_credential_source) "
            "(mi_credential_token_acquisition_duration_seconds_count)",
            at,
            source,
        ),
        "hit_ratio": await api.total(f'{requests}{{mi_credential_cache_result=~"hit|stale"}}', at)
        / await api.total(requests, at),
        "expiries": await api.vector(
            "min by (mi_credential_source, mi_credential_resource) "
            "(mi_credential_token_time_to_expiry_seconds)",
            at,
            ("mi_credential_resource", "mi_credential_source"),
        ),
    }


async def around_the_failure(api: Api) -> tuple[Series, Series]:
    """The failures panel over 3 s windows: one ending 0.5 s after the first sample of the
    failure's series (it appeared in it), one ending 5 s after (it did not)."""
    data = await api.query(
        f'mi_credential_token_refreshes_total{{mi_credential_outcome="error"}}[{WINDOW}s]',
        time.time(),
    )
    ((first, value), *_) = data["result"][0]["values"]
    assert float(value) == 1

    async def scraped_since() -> bool:
        scrapes = await api.vector("timestamp(up)", time.time(), ("instance",))
        return all(when > first + 6 for when in scrapes.values())

    await eventually(scraped_since, "scrapes 6 s after the failure's first sample")
    (target,) = panel_targets()[3]
    expr, labels = concrete(target["expr"], 3), legend_labels(target)
    return await api.vector(expr, first + 0.5, labels), await api.vector(expr, first + 5, labels)


async def test_every_panel_shows_what_happened(tmp_path: Path) -> None:
    async with AsyncExitStack() as stack:
        emulator = await stack.enter_async_context(Emulator())
        register_emulator(emulator)
        session = await stack.enter_async_context(aiohttp.ClientSession())
        history = await make_history(stack, emulator, tmp_path)
        api = Api(session, history.prometheus)

        requests = list(emulator.requests)
        imds_requests = len(emulator.requests_for("imds"))
        cloud_requests = len(emulator.requests_for("cloud_shell"))
        assert imds_requests == 3 and cloud_requests >= 5  # Cloud Shell: refreshed per token
        statuses = Counter(request.status for request in requests)
        assert statuses == {200: len(requests) - 1, 400: 1}, statuses

        # Every acquisition (one per request, plus the second IMDS process's token from the
        # first's refresh), every call in a burst, every wait and every cached token, scraped.
        expected = {
            "mi_credential_token_refreshes_total": len(requests) + 1,
            'http_client_request_duration_seconds_count{otel_scope_name="mi_credential"}': (
                len(requests)
            ),
            "mi_credential_token_coalesced_waiters_total": 2 * (CALLERS - 1),
            "mi_credential_shared_cache_lock_waits_total": 1,
            "count(mi_credential_token_time_to_expiry_seconds)": 6,  # 2 tokens per process
        }

        scraped_counts: dict[str, float] = {}

        async def scraped() -> bool:
            now = time.time()
            scraped_counts.update({expr: await api.total(expr, now) for expr in expected})
            return scraped_counts == expected

        await eventually(scraped, f"Prometheus to scrape {expected}", lambda: scraped_counts)
        at = time.time()
        panels = {
            (panel, target["refId"]): await api.vector(
                concrete(target["expr"], WINDOW), at, legend_labels(target)
            )
            for panel, targets in panel_targets().items()
            for target in targets
        }
        raw = await figures(api, at)
        born, later = await around_the_failure(api)
        stored = await api.query('{__name__=~"mi_credential_.+|http_client_.+"}', at)
        values = [value for item in stored["result"] for value in item["metric"].values()]
        for secret in emulator.secrets():
            assert not [value for value in values if secret in value], "a secret in a label"
        for sample in history.samples:
            assert await sample.stop() == 0, sample.output()

    first, second, cloud = history.samples
    for sample in history.samples:
        for secret in emulator.secrets():
            assert secret not in sample.output(), f"a secret in the {sample.name}'s output"
    assert first.stderr == second.stderr == "", first.output() + second.output()
    (failure,) = cloud.stderr.splitlines()  # logged on one line; the sample kept going
    match = re.fullmatch(r"\d\d:\d\d:\d\d no token for https://\S+: (\w+): .+", failure)
    assert match, failure
    failed = (("error_type", match.group(1)), ("mi_credential_source", "cloud_shell"))

    per_minute = 60 / WINDOW
    imds = (("mi_credential_source", "imds"),)
    cloud_shell = (("mi_credential_source", "cloud_shell"),)
    assert set(panels) == {
        (1, "A"), (1, "B"), (1, "C"), (2, "A"), (3, "A"), (4, "A"), (5, "A"), (6, "A"),
        (8, "A"), (9, "A"),
    }, "a panel this test does not check"

    # 1. Latency by source: both sources, the quantiles of every acquisition each recorded.
    assert raw["acquisitions"] == {imds: imds_requests + 1, cloud_shell: cloud_requests}
    for ref, quantile in (("A", 0.5), ("B", 0.95), ("C", 0.99)):
        latency = panels[(1, ref)]
        assert set(latency) == {imds, cloud_shell}, latency
        assert not any(math.isnan(value) for value in latency.values()), latency
        assert latency == pytest.approx(raw["quantiles"][quantile]), quantile

    # 2. Cache hit ratio: hits and stale-while-revalidate calls over all calls.
    ((_, ratio),) = panels[(2, "A")].items()
    assert 0 < ratio < 1 and ratio == pytest.approx(raw["hit_ratio"])

    # 3. Failed acquisitions: the one failure, with its type.
    assert panels[(3, "A")] == {failed: pytest.approx(per_minute)}

    # 4. Time to expiry: each source's tokens (the IMDS processes' management token is one).
    assert len(panels[(4, "A")]) == 5
    assert panels[(4, "A")] == pytest.approx(raw["expiries"])
    assert all(0 < value <= 86400 for value in panels[(4, "A")].values())

    # 5. Upstream requests: the emulator's record, by status.
    server = ("server_address", "127.0.0.1")
    assert panels[(5, "A")] == {
        (("http_response_status_code", "200"), server): pytest.approx(
            (len(requests) - 1) * per_minute
        ),
        (("http_response_status_code", "400"), server): pytest.approx(per_minute),
    }

    # 6. Callers that joined an acquisition in flight: the burst's, none elsewhere.
    assert panels[(6, "A")] == {
        imds: pytest.approx(2 * (CALLERS - 1) * per_minute),
        cloud_shell: 0,
    }

    # 8. Acquisitions by origin: one from another process's refresh, the rest the endpoint's.
    assert panels[(8, "A")] == {
        (("mi_credential_token_origin", "endpoint"),): pytest.approx(len(requests) * per_minute),
        (("mi_credential_token_origin", "shared_refresh"),): pytest.approx(per_minute),
    }

    # 9. Waits for another process's refresh: the second IMDS process's.
    assert panels[(9, "A")] == {imds: pytest.approx(per_minute)}

    # Around the failure's first sample: counted in a window it appeared in (1 in 3 s, per
    # minute), not in a later one.
    assert born == {failed: pytest.approx(60 / 3)}
    assert later == {failed: 0}
