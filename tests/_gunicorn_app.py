"""The FastAPI sample as gunicorn serves it in ``test_shared_cache_gunicorn.py``.

:func:`create_app` builds ``create_app()`` of ``samples/fastapi_app.py`` (the ASGI middleware,
warm-up of Resource Manager's scope, the readiness route), configured by the environment alone:
the emulator's variables and ``MI_CREDENTIAL_SHARED_CACHE``, as on a real host. What it adds
lets the test see each worker:

- In ``$MI_TEST_WORKER_REPORTS``, the worker writes ``<pid>.started`` when its startup begins,
  and ``<pid>.json`` when the middleware has reported it complete (after the warm-up): its
  readiness, a digest of the token it holds, and what its credential recorded on an in-memory
  meter provider (acquisitions by origin, lock waits).
- Every HTTP response carries the worker's pid in ``X-Worker-Pid``.
- mi-credential's log records (INFO and above) go to standard error, which is gunicorn's log.

    python -m gunicorn -k uvicorn_worker.UvicornWorker -w 4 'tests._gunicorn_app:create_app()'

Importing this module changes nothing (the test imports its constants); :func:`create_app`
sets the global meter provider and the loggers, in the process that serves.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from mi_credential import telemetry
from mi_credential_asgi import ManagedIdentityMiddleware

REPORTS_VARIABLE = "MI_TEST_WORKER_REPORTS"
PID_HEADER = "X-Worker-Pid"
SAMPLES = Path(__file__).parents[1] / "samples"


def create_app() -> WorkerReport:
    """The sample's application, reporting its worker (gunicorn's application factory)."""
    from opentelemetry import metrics
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    # Set before the credential is created (at the first lifespan event), so that it records
    # with this provider.
    reader = InMemoryMetricReader()
    metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))

    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("[%(process)d] [%(levelname)s] %(name)s: %(message)s"))
    for name in ("mi_credential", "mi_credential_asgi"):
        logging.getLogger(name).addHandler(handler)
        logging.getLogger(name).setLevel(logging.INFO)

    # samples/ is not a package: its programs are run, and imported from their directory.
    sys.path.insert(0, str(SAMPLES))
    sample = importlib.import_module("fastapi_app")
    return WorkerReport(sample.create_app(), reader, sample.ARM_SCOPE)


class WorkerReport:
    """Pure ASGI: reports the worker when its startup begins and when it is complete, and
    names it in every response."""

    def __init__(self, app: Any, reader: Any, scope: str) -> None:
        self.app = app
        self.reader = reader
        self.scope = scope

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":

            async def receive_lifespan() -> dict[str, Any]:
                message: dict[str, Any] = await receive()
                if message["type"] == "lifespan.startup":
                    write_report(".started", {"pid": os.getpid()})
                return message

            async def send_lifespan(message: dict[str, Any]) -> None:
                if message["type"] == "lifespan.startup.complete":
                    await self.report()
                await send(message)

            try:
                await self.app(scope, receive_lifespan, send_lifespan)
            except BaseException:
                # uvicorn's default ("auto") takes a failed lifespan for no lifespan, and says
                # only that: the cause goes to the log.
                logging.getLogger("mi_credential_asgi").exception("The lifespan failed")
                raise
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_http(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                pid = (PID_HEADER.lower().encode(), str(os.getpid()).encode())  # after a fork too
                message = {**message, "headers": [*message.get("headers", ()), pid]}
            await send(message)

        await self.app(scope, receive, send_http)

    async def report(self) -> None:
        provider = find_middleware(self.app).provider
        readiness = provider.readiness()
        digest = None
        if readiness.ready:  # a token in the credential's cache: no request
            token = await provider.token(self.scope)
            digest = hashlib.sha256(token.encode()).hexdigest()
        write_report(
            ".json",
            {
                "pid": os.getpid(),
                "readiness": readiness.as_dict(),
                "token_sha256": digest,
                "metrics": self.recorded_metrics(),
            },
        )

    def recorded_metrics(self) -> dict[str, list[dict[str, Any]]]:
        """The data points of the acquisition counter and the lock wait counter, by name."""
        wanted = {telemetry.TOKEN_REFRESHES, telemetry.SHARED_CACHE_LOCK_WAITS}
        points: dict[str, list[dict[str, Any]]] = {name: [] for name in wanted}
        data = self.reader.get_metrics_data()
        for resource_metrics in data.resource_metrics if data else ():
            for scope_metrics in resource_metrics.scope_metrics:
                for metric in scope_metrics.metrics:
                    if metric.name in wanted:
                        points[metric.name].extend(
                            {"attributes": dict(point.attributes or {}), "value": point.value}
                            for point in metric.data.data_points
                        )
        return points


def find_middleware(app: Any) -> ManagedIdentityMiddleware:
    """The middleware in a started Starlette application's middleware stack."""
    layer = app.middleware_stack
    while not isinstance(layer, ManagedIdentityMiddleware):
        layer = layer.app
    return layer


def write_report(suffix: str, report: dict[str, Any]) -> None:
    """``<pid><suffix>`` in the reports directory, renamed into place: the test never reads
    half of it."""
    path = Path(os.environ[REPORTS_VARIABLE], f"{os.getpid()}{suffix}")
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(report), encoding="utf-8")
    os.replace(temporary, path)
