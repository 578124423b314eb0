"""One run of the demo: the emulator and the servers beside it started, each step in turn under
one root span, the report, the HTML page, the OTLP export and the hold if asked for, and the exit
code."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import aiohttp
from opentelemetry.trace import Status, StatusCode

from mi_credential.emulator import Emulator

from ._hold import HOLD_REFRESH_IN, hold
from ._html import render_html
from ._services import CALL_TIMEOUT, ORDERS_AUDIENCE, OrdersApi, client_ssl_context
from ._stage import REPORT_WIDTH, Stage, fit, wrap
from ._steps import STEPS
from ._summary import render_next, render_report
from ._telemetry import DemoTelemetry, MissingDependencyError

#: Seconds a step may take before it counts as failed: the demo never hangs.
STEP_TIMEOUT = 30.0

EXIT_OK = 0
EXIT_PROBLEM = 1
EXIT_USAGE = 2
EXIT_MISSING_DEPENDENCY = 3


#: How usage errors start, as the command line's own do.
PROG = "mi-credential demo"


class UsageError(Exception):
    """An option the demo cannot run with; the message is one line for standard error."""


@dataclass
class DemoOptions:
    """What ``python -m mi_credential demo`` was asked for.

    Attributes:
        otlp: Base URL of an OTLP/HTTP receiver to send spans and metrics to as well.
        prometheus_port: Serve the Prometheus exposition on 127.0.0.1 at this port (0: any).
        hold: Seconds to keep everything running after the report, with light traffic.
        verbose: Print every metric series too, after the report's summary of each metric.
        html: Also write the report as a self-contained HTML page to this path (again when
            holding ends).
    """

    otlp: str | None = None
    prometheus_port: int | None = None
    hold: float = 0.0
    verbose: bool = False
    html: str | None = None


class Demo:
    """One run of the demo. ``await Demo().run()`` returns the exit code.

    Args:
        options: What to run with.
        out: Where the report goes (default: standard output).
    """

    def __init__(self, options: DemoOptions | None = None, *, out: TextIO | None = None) -> None:
        self.options = options or DemoOptions()
        self.out = out or sys.stdout
        self.results: dict[str, bool] = {}
        self.secrets: list[str] = []
        """Every secret the emulator handed out, kept when it stops (for leak checks)."""
        self.telemetry: DemoTelemetry | None = None
        self._stack = AsyncExitStack()
        self._emulator: Emulator | None = None
        self._traffic_failures: list[str] = []
        self._otlp_ok = True
        self._html_ok = True

    @property
    def emulator(self) -> Emulator | None:
        """The emulator of the current or last run."""
        return self._emulator

    def say(self, text: str = "") -> None:
        """Print ``text``, each line within the report's width."""
        print(fit(text), file=self.out, flush=True)

    async def run(self) -> int:
        """Run every step, print the report, and return the exit code.

        Raises:
            OSError: The Prometheus endpoint cannot listen on the port asked for (in use, say):
                raised before anything else starts or is printed, for the command line to
                report as it reports every port it cannot listen on.
        """
        try:
            self._check_html_path()
            telemetry = DemoTelemetry(
                prometheus_port=self.options.prometheus_port, otlp=self.options.otlp
            )
        except UsageError as exc:
            print(f"{PROG}: error: {exc}", file=sys.stderr)
            return EXIT_USAGE
        except MissingDependencyError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_MISSING_DEPENDENCY
        self.telemetry = telemetry
        try:
            async with self._stack:
                await self._run(telemetry)
        finally:
            telemetry.shutdown()
        self._say_result()
        for line in render_next(html=self.options.html is not None, verbose=self.options.verbose):
            self.say(line)
        ok = all(self.results.values()) and not self._traffic_failures
        return EXIT_OK if ok and self._otlp_ok and self._html_ok else EXIT_PROBLEM

    def _say_result(self) -> None:
        failed = [title for title, ok in self.results.items() if not ok]
        if failed:
            self.say(f"\nResult: FAILED ({'; '.join(failed)})")
        elif self._traffic_failures:
            self.say(
                f"\nResult: FAILED ({len(self._traffic_failures)} calls failed while holding, "
                f"the first: {self._traffic_failures[0]})"
            )
        elif not self._otlp_ok:
            self.say("\nResult: FAILED (the OTLP export)")
        elif not self._html_ok:
            self.say("\nResult: FAILED (the HTML report)")
        else:
            self.say("\nResult: OK, every step worked.")

    def _check_html_path(self) -> None:
        """Check, before anything starts, that the page can be written where ``--html`` says.

        Raises:
            UsageError: ``--html`` names a directory, or a file that cannot be written.
        """
        if self.options.html is None:
            return
        path = Path(self.options.html)
        if path.is_dir():
            raise UsageError(
                f"--html {path}: is a directory; name the page's file, {path / 'report.html'} say"
            )
        if not path.parent.is_dir():
            raise UsageError(f"--html {path}: no such directory: {path.parent}")
        if not os.access(path.parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
            raise UsageError(f"--html {path}: not writable")

    async def _run(self, telemetry: DemoTelemetry) -> None:
        stack = self._stack
        # The one port a user chooses is opened first: if it cannot be, its OSError leaves
        # nothing started, printed or written (the command line names the port and exits 2).
        prometheus_url = ""
        if telemetry.prometheus is not None:
            stack.push_async_callback(telemetry.prometheus.close)
            prometheus_url = await telemetry.prometheus.start()
        emulator = Emulator(refresh_in=HOLD_REFRESH_IN if self.options.hold else None)
        stack.push_async_callback(emulator.close)  # its files go even if it fails to start
        stack.callback(self._keep_secrets, emulator)
        await emulator.start()
        self._emulator = emulator

        orders = await OrdersApi(emulator, telemetry.tracer).start()
        stack.push_async_callback(orders.close)
        client = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=client_ssl_context(emulator.ca_file)),
            timeout=aiohttp.ClientTimeout(total=CALL_TIMEOUT),
        )
        stack.push_async_callback(client.close)
        stage = Stage(
            emulator=emulator,
            telemetry=telemetry,
            orders=orders,
            client=client,
            stack=stack,
            say=self.say,
        )

        self.say("mi-credential demo: the library end to end, against a local emulator")
        self.say()
        self.say(
            f"   Emulator     {emulator.http_url:<25} IMDS, App Service, Azure Arc, Azure ML, "
            "Cloud Shell"
        )
        self.say(f"                {emulator.https_url:<25} Service Fabric, Microsoft Entra ID")
        self.say(f"   Orders API   {orders.url}, accepts only tokens for {ORDERS_AUDIENCE}")
        if prometheus_url:
            self.say(f"   Prometheus   {prometheus_url}")
        if telemetry.otlp is not None:
            self.say(f"   OTLP         {telemetry.otlp.endpoint}, receives the spans and metrics")

        with telemetry.tracer.start_as_current_span("mi-credential demo"):
            for title, step in STEPS:
                self.results[title] = await self._step(stage, title, step)

        report = render_report(
            telemetry.collect(), telemetry.finished_spans(), verbose=self.options.verbose
        )
        for line in report:
            self.say(line)
        push = self._push if telemetry.otlp is not None else None
        if push is not None:
            await push()
            self._say_otlp(telemetry)
        self._write_html(telemetry)
        if self.options.hold > 0:
            self._traffic_failures = await hold(stage, self.options.hold, prometheus_url, push)
            if push is not None:
                await push()
                self._say_otlp(telemetry)
            self._write_html(telemetry, again=True)

    def _write_html(self, telemetry: DemoTelemetry, *, again: bool = False) -> None:
        if self.options.html is None:
            return
        path = Path(self.options.html)
        page = render_html(telemetry.finished_spans(), telemetry.collect(), results=self.results)
        try:
            path.write_text(page, encoding="utf-8")
        except OSError as exc:
            self._html_ok = False
            self.say(f"\nHTML report: cannot write {path} ({exc.strerror or exc})")
        else:
            title = f"HTML report{' (with the hold)' if again else ''}:"
            line = f"{title} {path}"
            self.say(f"\n{line}" if len(line) <= REPORT_WIDTH else f"\n{title}\n   {path}")

    def _keep_secrets(self, emulator: Emulator) -> None:
        self.secrets = emulator.secrets()

    async def _step(
        self, stage: Stage, title: str, step: Callable[[Stage], Awaitable[None]]
    ) -> bool:
        self.say(f"\n{title}")
        with stage.telemetry.tracer.start_as_current_span(title) as span:
            try:
                await asyncio.wait_for(step(stage), STEP_TIMEOUT)
            except asyncio.TimeoutError:
                span.set_status(Status(StatusCode.ERROR, "timeout"))
                self.say(wrap(f"FAILED: timed out (a step may take {STEP_TIMEOUT:g} s at most)"))
            except Exception as exc:  # the demo reports any failure and goes on
                span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                self.say(wrap(f"FAILED: {type(exc).__name__}: {exc}"))
            else:
                return True
        return False

    async def _push(self) -> None:
        """Send what was recorded since the last push over OTLP."""
        assert self.telemetry is not None
        self._otlp_ok = await self.telemetry.push() and self._otlp_ok

    def _say_otlp(self, telemetry: DemoTelemetry) -> None:
        otlp = telemetry.otlp
        assert otlp is not None
        if self._otlp_ok:
            self.say(
                f"\nOTLP: {otlp.sent_spans} spans and the metrics sent to {otlp.endpoint} "
                f"({otlp.pushes} push{'es' if otlp.pushes != 1 else ''})"
            )
        else:
            self.say(
                f"\nOTLP: sending to {otlp.endpoint} failed: is the collector running?\n"
                f"   {'; '.join(otlp.failures)}. To start one: cd samples/observability && "
                "docker compose up -d"
            )


async def run(args: argparse.Namespace) -> int:
    """The ``demo`` command of ``python -m mi_credential`` (its ``mi_credential.commands``
    entry point): ``args`` holds the options the command line parsed."""
    options = DemoOptions(
        otlp=args.otlp,
        prometheus_port=args.prometheus_port,
        hold=args.hold or 0.0,
        verbose=getattr(args, "verbose", False),
        html=getattr(args, "html", None),
    )
    return await Demo(options).run()
