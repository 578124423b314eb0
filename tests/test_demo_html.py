"""``python -m mi_credential demo --html PATH``: the page is written, holds everything it shows
(no request of any kind: no script, style sheet, font or image from elsewhere), shows each
acquisition's span waterfall and the latency per source, carries no secret, and renders in
headless Chromium without a console error.

Chromium is driven over the DevTools protocol (its websocket, with aiohttp), on 127.0.0.1 only:
every host name resolves to nothing and every HTTP request goes to a closed loopback port, so
the page could reach nothing even if it tried; the requests it makes are recorded and checked.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode

from mi_credential import telemetry
from mi_credential_demo import Demo, DemoOptions
from mi_credential_demo._html import render_html

from .conftest import register_emulator

DEMO_BOUND = 60.0
#: A bound on each exchange with Chromium (its start included): a hang fails the test.
BROWSER_BOUND = 30.0
VIEWPORT = (1200, 900)
BROWSERS = ("chromium", "google-chrome", "google-chrome-stable")
# Attributes that load something, or send the reader somewhere.
URL_ATTRIBUTES = {"src", "href", "xlink:href", "srcset", "action", "formaction", "poster", "data",
                  "background", "ping", "manifest"}


def run_demo(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TMPDIR": str(tmp), "TEMP": str(tmp), "TMP": str(tmp)}
    return subprocess.run(
        [sys.executable, "-W", "error", "-m", "mi_credential", "demo", *args],
        capture_output=True, text=True, timeout=DEMO_BOUND, env=env, check=False,
    )


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], Path]:
    """The demo run once with ``--html``: what it printed, and the page."""
    folder = tmp_path_factory.mktemp("html")
    (folder / "tmp").mkdir()
    page = folder / "demo report.html"  # a space, to be sure the path is passed as it is
    result = run_demo(folder / "tmp", "--html", str(page))
    assert result.returncode == 0, result.stdout + result.stderr
    return result, page


def printed_acquisitions(report: str) -> dict[str, int]:
    """The acquisitions per source of the printed latency table."""
    lines = report.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Acquisition latency"))
    counts = {}
    for line in lines[start + 2:]:
        if not line.strip():
            break
        source, count, *_ = line.split()
        counts[source] = int(count)
    return counts


class Page(HTMLParser):
    """Every start tag of a page with its attributes, and the text of its style elements."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.styles: list[str] = []
        self._in_style = False
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, {name: value or "" for name, value in attrs}))
        self._in_style = tag == "style"

    def handle_endtag(self, tag: str) -> None:
        self._in_style = False

    def handle_data(self, data: str) -> None:
        if self._in_style:
            self.styles.append(data)

    def count(self, tag: str, css: str) -> int:
        return sum(1 for t, a in self.tags if t == tag and css in a.get("class", "").split())


# -- the page, read as a file ---------------------------------------------------------------------


def test_the_demo_says_where_the_page_is(
    demo: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    result, page = demo
    assert f"\nHTML report: {page}\n" in result.stdout
    assert "\nResult: OK, every step worked.\n" in result.stdout
    next_steps = result.stdout.rstrip().split("\n\n")[-1]
    assert next_steps.startswith("Next:") and "--html" not in next_steps  # it was used
    assert all(len(line) <= 100 for line in result.stdout.splitlines())
    assert page.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")


def test_the_page_is_self_contained(demo: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    text = demo[1].read_text(encoding="utf-8")
    page = Page(text)
    for tag, attributes in page.tags:
        assert not (tag == "script" and "src" in attributes), attributes
        assert not (tag == "link" and "stylesheet" in attributes.get("rel", "")), attributes
        for name, value in attributes.items():
            assert "http://" not in value and "https://" not in value, (tag, name, value)
            if name in URL_ATTRIBUTES:
                assert value.startswith(("data:", "#")), (tag, name, value)
    assert page.count("svg", "latency") == 1 and page.count("svg", "run") == 1
    style = "".join(page.styles)
    assert style.strip(), "no inline style sheet"
    assert "@import" not in style and "@font-face" not in style
    assert all(url.startswith(("data:", "#")) for url in re.findall(r"url\(\s*['\"]?([^)'\"]*)",
                                                                    style))


def test_the_page_has_a_waterfall_per_acquisition_and_the_latency_per_source(
    demo: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    result, path = demo
    page = Page(path.read_text(encoding="utf-8"))
    counts = printed_acquisitions(result.stdout)
    figures = [a for t, a in page.tags if t == "figure" and a.get("class") == "acquisition"]
    assert len(figures) == sum(counts.values())
    assert {a["data-source"] for a in figures} == set(counts)
    assert page.count("svg", "waterfall") == len(figures) + 1  # and the whole run's
    rows = [a["data-source"] for t, a in page.tags if t == "g" and a.get("class") == "source"]
    assert rows == sorted(counts)
    assert page.count("circle", "dot") == sum(counts.values())
    # The throttled acquisition: a 429, then the retry after the wait it was told.
    text = path.read_text(encoding="utf-8")
    assert "GET → 429" in text and "GET retry 1 → 200" in text
    assert re.search(r">waited [\d.]+ m?s<", text)
    assert "failed: CredentialUnavailableError" in text


async def test_the_page_carries_no_secret(tmp_path: Path) -> None:
    path = tmp_path / "report.html"
    demo = Demo(DemoOptions(html=str(path)), out=io.StringIO())
    code = await asyncio.wait_for(demo.run(), DEMO_BOUND)
    assert demo.emulator is not None
    register_emulator(demo.emulator)
    assert code == 0
    text = path.read_text(encoding="utf-8")
    secrets = [s for s in demo.secrets if s]
    assert secrets
    for secret in secrets:
        assert secret not in text
    assert demo.telemetry is not None
    urls = {
        str(s.attributes[telemetry.URL_FULL])
        for s in demo.telemetry.finished_spans()
        if s.attributes and telemetry.URL_FULL in s.attributes
    }
    assert urls
    for url in urls:  # the endpoints' paths and queries are left out
        assert url.split("://", 1)[1].split("/", 1)[1] not in text


def test_every_text_of_the_page_is_escaped_and_failures_are_marked() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    with (
        tracer.start_as_current_span("<script>alert(1)</script>"),
        tracer.start_as_current_span(
            telemetry.ACQUISITION_SPAN,
            attributes={telemetry.SOURCE: "imds<b>", telemetry.ERROR_TYPE: "Timeout&Co"},
        ) as acquisition,
    ):
        acquisition.set_status(Status(StatusCode.ERROR))
        with tracer.start_as_current_span(
            "GET", kind=SpanKind.CLIENT,
            attributes={telemetry.SERVER_ADDRESS: "127.0.0.1",
                        telemetry.ERROR_TYPE: "ServerTimeoutError"},
        ):
            pass
    text = render_html(exporter.get_finished_spans(), None, results={"<step>": False})
    provider.shutdown()
    for raw in ("<script", "imds<b>", "<step>", "Timeout&Co"):
        assert raw not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text and "Timeout&amp;Co" in text
    assert "GET ✗ ServerTimeoutError" in text
    page = Page(text)
    # The two failed spans, in the acquisition's waterfall and in the run's.
    assert page.count("g", "error") == 4
    assert page.count("circle", "error") == 1
    assert page.count("div", "failed") == 1  # the result card


@pytest.mark.parametrize("where", ["missing", "directory"])
def test_a_page_that_cannot_be_written_is_a_usage_error(tmp_path: Path, where: str) -> None:
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    target = tmp_path / "missing" / "report.html" if where == "missing" else tmp_path
    result = run_demo(temporary, "--html", str(target))
    assert result.returncode == 2, result.stdout + result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"mi-credential demo: error: --html {target}: "), line
    assert ("no such directory" if where == "missing" else "is a directory") in line
    assert result.stdout == ""
    assert list(temporary.iterdir()) == []


# -- the page, rendered by headless Chromium --------------------------------------------------------


class DevTools:
    """A DevTools protocol connection to a browser (flat sessions on the browser's socket)."""

    def __init__(self, socket: aiohttp.ClientWebSocketResponse) -> None:
        self._socket = socket
        self._ids = 0
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.events: list[dict[str, Any]] = []
        self._arrived = asyncio.Event()
        self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        try:
            async for message in self._socket:
                if message.type is not aiohttp.WSMsgType.TEXT:
                    continue
                data = json.loads(message.data)
                future = self._pending.pop(data["id"], None) if "id" in data else None
                if future is not None and not future.done():
                    future.set_result(data)
                elif "method" in data:
                    self.events.append(data)
                    self._arrived.set()
        finally:
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(ConnectionError("the browser closed the connection"))

    async def call(self, method: str, session: str | None = None, **params: Any) -> dict[str, Any]:
        self._ids += 1
        message: dict[str, Any] = {"id": self._ids, "method": method, "params": params}
        if session is not None:
            message["sessionId"] = session
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[self._ids] = future
        await self._socket.send_str(json.dumps(message))
        reply = await asyncio.wait_for(future, BROWSER_BOUND)
        assert "error" not in reply, f"{method}: {reply['error']}"
        result: dict[str, Any] = reply["result"]
        return result

    async def event(self, method: str, session: str, after: int) -> dict[str, Any]:
        """The first ``method`` event of ``session`` among those after the first ``after``."""

        async def arrived() -> dict[str, Any]:
            while True:
                for event in self.events[after:]:
                    if event["method"] == method and event.get("sessionId") == session:
                        return event
                self._arrived.clear()
                await self._arrived.wait()

        return await asyncio.wait_for(arrived(), BROWSER_BOUND)

    async def close(self) -> None:
        await self._socket.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._reader, BROWSER_BOUND)


def find_browser() -> str | None:
    return next((path for name in BROWSERS if (path := shutil.which(name))), None)


@contextlib.asynccontextmanager
async def browser(profile: Path) -> AsyncIterator[DevTools]:
    """Headless Chromium on a fresh profile, reachable on 127.0.0.1 only; killed at the end."""
    binary = find_browser()
    assert binary is not None
    process = await asyncio.create_subprocess_exec(
        binary, "--headless=new", "--remote-debugging-port=0", f"--user-data-dir={profile}",
        "--no-sandbox", "--disable-gpu",
        "--disable-dev-shm-usage", "--no-first-run", "--no-default-browser-check",
        "--disable-extensions", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-pings", "--mute-audio", "--proxy-server=127.0.0.1:9",
        "--host-resolver-rules=MAP * ~NOTFOUND", f"--window-size={VIEWPORT[0]},{VIEWPORT[1]}",
        "about:blank",
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE, start_new_session=True,
    )
    said: list[str] = []
    drain: asyncio.Future[None] | None = None
    try:
        assert process.stderr is not None
        stderr = process.stderr

        async def listening() -> str:
            while True:
                line = (await stderr.readline()).decode(errors="replace")
                assert line, "chromium exited before listening:\n" + "".join(said)
                said.append(line)
                if match := re.search(r"DevTools listening on (ws://\S+)", line):
                    return match.group(1)

        url = await asyncio.wait_for(listening(), BROWSER_BOUND)

        async def keep_reading() -> None:  # so that chromium never blocks on a full pipe
            while line := await stderr.readline():
                said.append(line.decode(errors="replace"))

        drain = asyncio.ensure_future(keep_reading())
        async with aiohttp.ClientSession() as session:
            socket = await session.ws_connect(url, max_msg_size=64 * 2**20)
            devtools = DevTools(socket)
            try:
                yield devtools
                with contextlib.suppress(Exception):
                    await devtools.call("Browser.close")
            finally:
                await devtools.close()
    finally:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)  # chromium and its helper processes
        await asyncio.wait_for(process.wait(), BROWSER_BOUND)
        if drain is not None:
            drain.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await drain


#: What the page shows once rendered: elements that take room on screen, the style applied.
LOOK = """(() => {
  const all = (selector) => [...document.querySelectorAll(selector)];
  const shown = (e) => { const r = e.getBoundingClientRect(); return r.width > 0 && r.height > 0; };
  const bar = document.querySelector("svg.waterfall g.acquisition rect.bar");
  return {
    title: document.title,
    latency: all("svg.latency").filter(shown).length,
    sources: all("svg.latency g.source").map((g) => g.dataset.source),
    dots: all("svg.latency circle.dot").filter(shown).length,
    figures: all("figure.acquisition").length,
    waterfalls: all("figure.acquisition svg.waterfall").filter(shown).length,
    bars: all("svg.waterfall rect.bar").filter((r) => r.getBBox().width > 0).length,
    run: all("svg.waterfall.run").filter(shown).length,
    acquisitionFill: bar ? getComputedStyle(bar).fill : "",
    overflow: document.documentElement.scrollWidth - window.innerWidth,
  };
})()"""


@pytest.mark.skipif(
    find_browser() is None,
    reason=f"no Chromium to render the page with (none of {', '.join(BROWSERS)} is on PATH; "
    "Debian: apt-get install chromium)",
)
async def test_the_page_renders_in_headless_chromium_without_an_error(
    demo: tuple[subprocess.CompletedProcess[str], Path], tmp_path: Path
) -> None:
    result, page = demo
    counts = printed_acquisitions(result.stdout)
    async with browser(tmp_path / "profile") as devtools:
        target = await devtools.call("Target.createTarget", url="about:blank")
        attached = await devtools.call(
            "Target.attachToTarget", targetId=target["targetId"], flatten=True
        )
        session = attached["sessionId"]
        for domain in ("Runtime", "Log", "Network", "Page"):
            await devtools.call(f"{domain}.enable", session)
        await devtools.call(
            "Emulation.setDeviceMetricsOverride", session,
            width=VIEWPORT[0], height=VIEWPORT[1], deviceScaleFactor=1, mobile=False,
        )
        before = len(devtools.events)
        navigated = await devtools.call("Page.navigate", session, url=page.as_uri())
        assert "errorText" not in navigated, navigated
        await devtools.event("Page.loadEventFired", session, before)
        evaluated = await devtools.call(
            "Runtime.evaluate", session, expression=LOOK, returnByValue=True
        )
        assert "exceptionDetails" not in evaluated, evaluated
        look = evaluated["result"]["value"]
        screenshot = await devtools.call("Page.captureScreenshot", session, format="png")
        events = [e for e in devtools.events if e.get("sessionId") == session]

    errors = [
        e["params"] for e in events
        if e["method"] == "Runtime.exceptionThrown"
        or (e["method"] == "Runtime.consoleAPICalled" and e["params"]["type"] in ("error", "assert"))
        or (e["method"] == "Log.entryAdded" and e["params"]["entry"]["level"] == "error")
    ]
    assert errors == []
    requested = [e["params"]["request"]["url"] for e in events
                 if e["method"] == "Network.requestWillBeSent"]
    assert requested and all(url.startswith(("file:", "data:")) for url in requested), requested

    assert look["title"] == "mi-credential demo report"
    assert look["latency"] == 1 and look["sources"] == sorted(counts)
    assert look["dots"] == look["figures"] == look["waterfalls"] == sum(counts.values())
    assert look["bars"] >= 2 * look["figures"]  # each acquisition and at least one attempt
    assert look["run"] == 1
    assert look["acquisitionFill"] == "rgb(47, 111, 222)"  # the style sheet applies
    assert look["overflow"] <= 0  # nothing wider than the window

    png = base64.b64decode(screenshot["data"])
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    size = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert size == VIEWPORT
    (tmp_path / "report.png").write_bytes(png)
