"""Serve mi-credential's token metrics on /metrics for Prometheus to scrape.

The OpenTelemetry SDK, with its Prometheus exporter, is configured once as the global meter
provider, which every ManagedIdentityCredential then records to. The program gets tokens as an
application does: every --interval seconds, --callers concurrent callers ask for each --scope
(cache hits, but for the first calls and the refreshes). A call that fails is logged on one
line to stderr and the program keeps going: the failure is in the metrics it serves.

    python samples/observability/prometheus_exporter.py
        on Azure: serves http://127.0.0.1:9464/metrics and gets tokens every 30 s until
        interrupted (Ctrl+C)
    python samples/observability/prometheus_exporter.py --emulator
        anywhere: against the local emulator; three rounds, then it scrapes itself once,
        prints mi-credential's series and stops

Point Prometheus at the port (scrape_configs: [{job_name: app, static_configs:
[{targets: ["HOST:9464"]}]}]) and import grafana/mi-credential-dashboard.json into Grafana.
Needs: pip install mi-credential opentelemetry-sdk opentelemetry-exporter-prometheus
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

import aiohttp
from opentelemetry import metrics
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.resources import Resource
from prometheus_client import start_http_server

from mi_credential import ManagedIdentityCredential, ManagedIdentityError

SCOPES = ("https://management.azure.com/.default", "https://vault.azure.net/.default")
EMULATOR_ROUNDS = 3


def configure_metrics(port: int, host: str) -> Any:
    """Record to a Prometheus reader and serve it on ``host:port``. Returns the HTTP server."""
    metrics.set_meter_provider(
        MeterProvider(
            resource=Resource.create({"service.name": "prometheus-exporter-sample"}),
            metric_readers=[PrometheusMetricReader()],
        )
    )
    server, _ = start_http_server(port, addr=host)
    return server


def log_failure(scope: str, error: ManagedIdentityError) -> None:
    """One line on stderr: when, for what, and the error's first line (never a token)."""
    first_line = (str(error).splitlines() or [""])[0]
    stamp = time.strftime("%H:%M:%S")
    print(f"{stamp} no token for {scope}: {type(error).__name__}: {first_line}", file=sys.stderr)


async def get_tokens(
    credential: ManagedIdentityCredential,
    scopes: Sequence[str],
    *,
    callers: int,
    interval: float,
    rounds: int | None,
) -> None:
    """The application's work: ``callers`` concurrent calls for each scope, every ``interval``
    seconds (``rounds`` times; ``None``: until cancelled). A failed call is logged, once per
    scope and round, and the next round goes on."""
    done = 0
    while rounds is None or done < rounds:
        calls = [credential.get_token(scope) for scope in scopes for _ in range(callers)]
        results = await asyncio.gather(*calls, return_exceptions=True)
        failed: dict[str, ManagedIdentityError] = {}
        for index, result in enumerate(results):
            if isinstance(result, ManagedIdentityError):
                failed.setdefault(scopes[index // callers], result)
            elif isinstance(result, BaseException):
                raise result
        for scope, error in failed.items():
            log_failure(scope, error)
        done += 1
        if rounds is None:
            await asyncio.sleep(interval)


async def print_own_series(url: str) -> None:
    """Scrape ``url`` once and print mi-credential's series (histogram buckets left out)."""
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        exposition = await response.text()
    ours = ("mi_credential_", "http_client_")
    for line in exposition.splitlines():
        if line.startswith(ours) and "_bucket" not in line:
            print(line)


async def run(
    environ: Mapping[str, str] | None, args: argparse.Namespace, url: str, *, once: bool
) -> None:
    """Get tokens with a credential for ``environ`` (``None``: this machine's), saying first
    what it does; ``once``: a few rounds, then print the series served at ``url``."""
    print(f"Serving mi-credential's metrics at {url}", flush=True)
    async with ManagedIdentityCredential(environ=environ) as credential:
        source = credential.source.value if credential.source else "none found"
        callers = f"{args.callers} caller{'s' if args.callers > 1 else ''} per scope"
        when = f"in {EMULATOR_ROUNDS} rounds" if once else f"every {args.interval:g} s"
        print(f"Managed identity source: {source}", flush=True)
        print(f"Getting tokens for {', '.join(args.scope)} {when} ({callers})", flush=True)
        if not once:
            print("Ctrl+C stops.", flush=True)
        await get_tokens(
            credential,
            args.scope,
            callers=args.callers,
            interval=args.interval,
            rounds=EMULATOR_ROUNDS if once else None,
        )
        if once:
            await print_own_series(url)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to serve /metrics on (default: %(default)s; 0.0.0.0 to be scraped "
        "from other hosts)",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=9464,
        help="port to serve /metrics on (default: %(default)s; 0: any free port, printed at start)",
    )
    parser.add_argument(
        "--scope",
        action="append",
        help=f"a scope to get tokens for; repeat for several (default: {' and '.join(SCOPES)})",
    )
    parser.add_argument(
        "--interval",
        type=float,
        default=30.0,
        help="seconds between rounds of calls (default: %(default)g)",
    )
    parser.add_argument(
        "--callers",
        type=int,
        default=1,
        help="concurrent callers per scope in each round, as request handlers that need a "
        "token at the same moment (default: %(default)s)",
    )
    parser.add_argument(
        "--emulator",
        action="store_true",
        help="use the local emulator: three rounds, print the series served, stop",
    )
    args = parser.parse_args(argv)
    if not 0 <= args.port <= 65535:
        parser.error(f"--port must be between 0 and 65535, not {args.port}")
    if not args.interval > 0:
        parser.error(f"--interval must be a positive number of seconds, not {args.interval:g}")
    if args.callers < 1:
        parser.error(f"--callers must be at least 1, not {args.callers}")
    args.scope = args.scope or list(SCOPES)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.emulator:
        args.host, args.port = "127.0.0.1", 0  # any free port
    try:
        server = configure_metrics(args.port, args.host)
    except OSError as exc:  # the port is taken, or the address is not this host's
        print(f"cannot serve on {args.host}:{args.port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    url = f"http://{args.host}:{server.server_port}/metrics"

    async def against_emulator() -> None:
        from mi_credential.emulator import Emulator

        async with Emulator() as emulator:
            await run(emulator.environ("imds"), args, url, once=True)

    try:
        if args.emulator:
            asyncio.run(against_emulator())
        else:
            asyncio.run(run(None, args, url, once=False))
    except KeyboardInterrupt:
        print("Stopped.", flush=True)
    finally:
        server.shutdown()
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
