"""Expose mi-credential's token metrics for Prometheus to scrape: the OpenTelemetry SDK with its
Prometheus exporter, configured once as the global meter provider, which every
ManagedIdentityCredential then records to.

    python samples/observability/prometheus_exporter.py              # on Azure: serves
        http://127.0.0.1:9464/metrics and gets a token every 30 s, as an application would
    python samples/observability/prometheus_exporter.py --emulator   # anywhere: against the
        local emulator; scrapes itself once, prints mi-credential's series, and stops

Point Prometheus at the port (``scrape_configs: [{job_name: app, static_configs:
[{targets: ["HOST:9464"]}]}]``) and import grafana/mi-credential-dashboard.json into Grafana.
Needs ``pip install mi-credential opentelemetry-sdk opentelemetry-exporter-prometheus``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Mapping
from typing import Any

import aiohttp
from opentelemetry import metrics
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.resources import Resource
from prometheus_client import start_http_server

from mi_credential import ManagedIdentityCredential, ManagedIdentityError

SCOPES = ("https://management.azure.com/.default", "https://vault.azure.net/.default")


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


async def get_tokens(credential: ManagedIdentityCredential, rounds: int | None) -> None:
    """The application's work: tokens as it needs them (cache hits but for the first)."""
    done = 0
    while rounds is None or done < rounds:
        for scope in SCOPES:
            await credential.get_token(scope)
        done += 1
        if rounds is None:
            await asyncio.sleep(30)


async def run(environ: Mapping[str, str] | None, port: int, host: str, once: bool) -> None:
    server = configure_metrics(port, host)
    try:
        async with ManagedIdentityCredential(environ=environ) as credential:
            await get_tokens(credential, rounds=3 if once else None)
            if once:
                url = f"http://{host}:{server.server_port}/metrics"
                async with aiohttp.ClientSession() as http, http.get(url) as response:
                    exposition = await response.text()
                ours = ("mi_credential_", "http_client_")
                for line in exposition.splitlines():  # histogram buckets left out
                    if line.startswith(ours) and "_bucket" not in line:
                        print(line)
    finally:
        server.shutdown()
        server.server_close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=9464)
    parser.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to be scraped from outside")
    parser.add_argument("--emulator", action="store_true", help="use the local emulator")
    args = parser.parse_args()

    async def against_emulator() -> None:
        from mi_credential.emulator import Emulator

        async with Emulator() as emulator:
            await run(emulator.environ("imds"), 0, "127.0.0.1", once=True)  # port 0: any free

    try:
        if args.emulator:
            asyncio.run(against_emulator())
        else:
            asyncio.run(run(None, args.port, args.host, once=False))
    except ManagedIdentityError as exc:
        print(f"no token: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
