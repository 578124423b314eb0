"""``--hold``: after the report, keep everything running with a round of calls every second, for
Prometheus scrapes and dashboards, until the time is up or the process is asked to stop."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Awaitable, Callable
from typing import Any

from ._services import CALL_TIMEOUT
from ._stage import Stage

#: While holding, token responses that can carry ``refresh_in`` carry this one, so that
#: background refreshes show in the metrics.
HOLD_REFRESH_IN = 60
#: Seconds between OTLP pushes while holding.
PUSH_INTERVAL = 10.0


async def hold(
    stage: Stage,
    seconds: float,
    prometheus_url: str,
    push: Callable[[], Awaitable[None]] | None,
) -> list[str]:
    """Call what the steps left behind once a second for ``seconds`` (SIGINT or SIGTERM ends it
    sooner), and ``push`` (the OTLP export, if any) every :data:`PUSH_INTERVAL` seconds.

    Returns:
        The calls that failed, as ``"<call>: <error type>"``.
    """
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    failures: list[str] = []
    installed = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):  # not on Windows
            loop.add_signal_handler(signum, stop.set)
            installed.append(signum)
    try:
        stage.say(
            f"\nHolding for {seconds:g} s (Ctrl-C ends it), with a round of calls every "
            "second. With --hold, IMDS,\nAzure Arc, Cloud Shell and workload identity tokens "
            f"carry refresh_in={HOLD_REFRESH_IN} s, so background refreshes\nshow in the "
            "metrics."
        )
        if stage.app_url:
            stage.say(f"   FastAPI app  {stage.app_url}/orders  {stage.app_url}/health/identity")
        if prometheus_url:
            stage.say(f"   Prometheus   {prometheus_url}")
        end = loop.time() + seconds
        next_push = loop.time() + PUSH_INTERVAL
        while not stop.is_set() and (remaining := end - loop.time()) > 0:
            with stage.telemetry.tracer.start_as_current_span("hold: a round of calls"):
                failures += await _round_of_calls(stage)
            if push is not None and loop.time() >= next_push:
                await push()
                next_push = loop.time() + PUSH_INTERVAL
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), min(1.0, remaining))
    finally:
        for signum in installed:
            loop.remove_signal_handler(signum)
    stage.say("Stopped holding.")
    return failures


async def _round_of_calls(stage: Stage) -> list[str]:
    calls: list[tuple[str, Callable[[], Awaitable[Any]]]] = [
        (f"get_token ({c.source.value if c.source else '?'})", _bind(c.get_token, s))
        for c, s in stage.traffic
    ]
    if stage.app_url is not None:
        calls.append(("GET /orders (FastAPI app)", lambda: stage.call_app("/orders")))
    if stage.pipeline is not None:
        calls.append(("GET /orders (azure-core)", stage.call_pipeline))
    failures = []
    for name, call in calls:
        try:
            await asyncio.wait_for(call(), CALL_TIMEOUT)
        except Exception as exc:  # counted and reported; holding goes on
            failures.append(f"{name}: {type(exc).__name__}")
    return failures


def _bind(method: Callable[[str], Awaitable[Any]], scope: str) -> Callable[[], Awaitable[Any]]:
    return lambda: method(scope)
