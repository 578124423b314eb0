"""A real gunicorn: four uvicorn workers serving the FastAPI sample (``tests/_gunicorn_app.py``)
on 127.0.0.1, each with its own credential, configured by the environment alone. With
``MI_CREDENTIAL_SHARED_CACHE`` naming a directory, their four warm-ups make one token request
in all; with it off (the control), one each.

The emulator holds its token responses until every worker has begun its startup, so that the
four warm-ups overlap the first token's flight instead of following it. Each worker reports
itself in a file when its startup begins and when it is complete; every wait is on such a
condition, with a bound.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import importlib.util
import json
import os
import re
import signal
import socket
import stat
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from mi_credential import telemetry
from mi_credential.emulator import Emulator

from ._gunicorn_app import PID_HEADER, REPORTS_VARIABLE
from .conftest import register_emulator

pytestmark = pytest.mark.skipif(
    sys.platform == "win32", reason="gunicorn runs on Unix only (fork, fcntl)"
)

ROOT = Path(__file__).parents[1]
WORKERS = 4
ARM = "https://management.azure.com"
ARM_SCOPE = ARM + "/.default"
BOUND = 60.0  # seconds any wait may take before the test fails; never an assertion on duration
POLL = 0.02
STOP_BOUND = 20.0

T = TypeVar("T")


def worker_class() -> str:
    """The uvicorn-worker package's worker; uvicorn's own (deprecated) where that package is
    not installed."""
    if importlib.util.find_spec("uvicorn_worker") is not None:
        return "uvicorn_worker.UvicornWorker"
    return "uvicorn.workers.UvicornWorker"


def control_socket_options() -> list[str]:
    """gunicorn 25.1 and later listen on a control socket in the user's home by default."""
    from gunicorn.config import KNOWN_SETTINGS

    if any(setting.name == "control_socket_disable" for setting in KNOWN_SETTINGS):
        return ["--no-control-socket"]
    return []


def worker_environ(emulator: Emulator, shared_cache: str, reports: Path) -> dict[str, str]:
    """The test's environment (the conftest removed every managed identity variable), pointed
    at the emulator as App Service, with the shared cache setting and the (new) reports
    directory. No proxy variables: the workers talk to the emulator on 127.0.0.1 only."""
    environ = {
        name: value
        for name, value in os.environ.items()
        if not name.lower().endswith("_proxy") and name != "GUNICORN_CMD_ARGS"
    }
    environ.update(emulator.environ("app_service"))
    environ["MI_CREDENTIAL_SHARED_CACHE"] = shared_cache
    environ[REPORTS_VARIABLE] = str(reports)
    reports.mkdir()
    environ["PYTHONUNBUFFERED"] = "1"
    return environ


class Gunicorn:
    """A gunicorn master started by the test, its log, and its workers' reports."""

    def __init__(self, process: asyncio.subprocess.Process, url: str, log: Path, reports: Path):
        self.process = process
        self.url = url
        self.log = log
        self.reports = reports

    def log_text(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def booted(self) -> list[int]:
        """The pids of the workers the master booted, as it logged them."""
        return [int(pid) for pid in re.findall(r"Booting worker with pid: (\d+)", self.log_text())]

    def reported(self, suffix: str) -> dict[int, dict[str, Any]]:
        """The reports of one kind (``.started``, ``.json``), by worker pid."""
        return {
            int(path.name.removesuffix(suffix)): json.loads(path.read_text(encoding="utf-8"))
            for path in self.reports.glob(f"*{suffix}")
        }

    async def wait_for(self, what: str, condition: Callable[[], T | None]) -> T:
        """``condition()``'s first true value, checked until ``BOUND`` seconds have passed."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + BOUND
        while True:
            value = condition()
            if value:
                return value
            if self.process.returncode is not None:
                pytest.fail(
                    f"gunicorn exited ({self.process.returncode}) before {what}:\n{self.log_text()}"
                )
            if loop.time() > deadline:
                pytest.fail(f"not {what} within {BOUND:.0f} s:\n{self.log_text()}")
            await asyncio.sleep(POLL)

    def reports_of_every_worker(self, suffix: str) -> dict[int, dict[str, Any]] | None:
        reports = self.reported(suffix)
        return reports if len(reports) >= WORKERS else None

    async def probe_until_every_worker_answers(self, pids: set[int]) -> None:
        """``GET /health/identity`` on a new connection each time (the kernel hands each to
        whichever worker accepts first) until every worker of ``pids`` has answered; each
        answer must say ready."""
        answered: collections.Counter[int] = collections.Counter()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + BOUND
        async with httpx.AsyncClient(base_url=self.url, trust_env=False) as client:
            while set(answered) != pids:
                if loop.time() > deadline:
                    pytest.fail(f"only workers {dict(answered)} of {pids} answered readiness")
                response = await client.get("/health/identity", headers={"Connection": "close"})
                assert response.status_code == 200, response.text
                assert response.json()["ready"] is True, response.text
                pid = int(response.headers[PID_HEADER])
                assert pid in pids, pid
                answered[pid] += 1

    async def stop(self) -> None:
        """SIGTERM (gunicorn's graceful shutdown), then SIGKILL to its process group if it has
        not exited within the bound."""
        process = self.process
        if process.returncode is not None:
            return
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), STOP_BOUND)
        except asyncio.TimeoutError:
            os.killpg(process.pid, signal.SIGKILL)  # its own group: start_new_session
            await process.wait()


@asynccontextmanager
async def gunicorn(environ: dict[str, str], tmp_path: Path) -> AsyncIterator[Gunicorn]:
    """gunicorn with ``WORKERS`` uvicorn workers, on a socket the test bound on 127.0.0.1 (a
    free port, no race for it) and handed over as ``fd://``."""
    reports = Path(environ[REPORTS_VARIABLE])
    log = tmp_path / "gunicorn.log"
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        port = listener.getsockname()[1]
        with log.open("wb") as output:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "gunicorn",
                "--workers",
                str(WORKERS),
                "--worker-class",
                worker_class(),
                "--bind",
                f"fd://{listener.fileno()}",
                "--chdir",
                str(ROOT),
                "--log-level",
                "info",
                # Bounds of gunicorn's own, loose enough for a loaded machine: a worker's
                # boot (imports and warm-up) before the master takes it for hung, and its
                # shutdown before the master kills it.
                "--timeout",
                "120",
                "--graceful-timeout",
                "10",
                *control_socket_options(),
                "tests._gunicorn_app:create_app()",
                cwd=ROOT,
                env=environ,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=output,
                stderr=output,
                pass_fds=(listener.fileno(),),
                start_new_session=True,
            )
    server = Gunicorn(process, f"http://127.0.0.1:{port}", log, reports)
    try:
        yield server
    finally:
        await server.stop()


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def origin_of(report: dict[str, Any]) -> str:
    """Where the worker's one acquisition got its token (``mi_credential.token.origin``)."""
    points = report["metrics"][telemetry.TOKEN_REFRESHES]
    assert [point["value"] for point in points] == [1], points
    attributes = points[0]["attributes"]
    assert attributes[telemetry.OUTCOME] == "success"
    assert attributes[telemetry.REFRESH_REASON] == "initial"
    origin: str = attributes[telemetry.TOKEN_ORIGIN]
    return origin


def lock_waits_of(report: dict[str, Any]) -> int:
    return sum(point["value"] for point in report["metrics"][telemetry.SHARED_CACHE_LOCK_WAITS])


@pytest.mark.parametrize(
    ("shared", "token_requests"),
    [pytest.param(True, 1, id="shared-cache"), pytest.param(False, WORKERS, id="control-off")],
)
async def test_four_gunicorn_workers_warm_up(
    tmp_path: Path, shared: bool, token_requests: int
) -> None:
    cache = tmp_path / "shared-cache"  # created by the first credential, 0700
    async with Emulator() as emulator:  # the real clock: the workers'
        register_emulator(emulator)
        environ = worker_environ(emulator, str(cache) if shared else "0", tmp_path / "reports")
        async with gunicorn(environ, tmp_path) as server:
            with emulator.hold():  # token responses wait until every worker is starting
                started = await server.wait_for(
                    f"{WORKERS} workers starting",
                    lambda: server.reports_of_every_worker(".started"),
                )
            reports = await server.wait_for(
                f"{WORKERS} workers started and warmed up",
                lambda: server.reports_of_every_worker(".json"),
            )
            booted = server.booted()

            # Readiness over HTTP, through gunicorn's socket, until each worker has answered.
            await server.probe_until_every_worker_answers(set(reports))
            requests = list(emulator.requests)
        log = server.log_text()

    # Four workers, booted once each (none died and was replaced), each started and warmed up.
    assert len(booted) == WORKERS, log
    assert set(booted) == set(started) == set(reports), log

    # The emulator saw the warm-up scope's token requests, and no other.
    assert len(requests) == token_requests, requests
    assert {(r.source, r.param("resource")) for r in requests} == {("app_service", ARM)}
    assert emulator.issued == token_requests

    # Every worker holds a token for the warm-up scope: one token for all, or one each.
    for report in reports.values():
        readiness = report["readiness"]
        assert readiness["ready"] is True and readiness["last_error"] is None, readiness
        [status] = readiness["scopes"]
        assert status["scope"] == ARM_SCOPE and status["expires_in"] > 0, status
    held = [report["token_sha256"] for report in reports.values()]
    if shared:
        assert set(held) == {sha256(emulator.issued_tokens[0])}
    else:
        assert set(held) == {sha256(token) for token in emulator.issued_tokens}
        assert len(set(held)) == WORKERS

    # Where each worker's token came from, as its telemetry says.
    origins = collections.Counter(origin_of(report) for report in reports.values())
    waits = sum(lock_waits_of(report) for report in reports.values())
    if shared:
        assert origins[telemetry.ORIGIN_ENDPOINT] == 1, origins
        assert set(origins) <= {
            telemetry.ORIGIN_ENDPOINT,
            telemetry.ORIGIN_SHARED_CACHE,
            telemetry.ORIGIN_SHARED_REFRESH,
        }
        # A worker that waited for the refresher's lock took the token it wrote.
        assert waits == origins[telemetry.ORIGIN_SHARED_REFRESH]
        # One entry (and its lock) in a private directory.
        assert stat.S_IMODE(cache.stat().st_mode) == 0o700
        entries = sorted(path.suffix for path in cache.iterdir())
        assert entries == [".json", ".lock"], entries
        assert all(stat.S_IMODE(path.stat().st_mode) == 0o600 for path in cache.iterdir())
    else:
        assert origins == {telemetry.ORIGIN_ENDPOINT: WORKERS}
        assert waits == 0
        assert not cache.exists()

    # Nothing went wrong in any process, and no secret reached the log.
    assert "Traceback" not in log, log
    assert not re.search(r"\[(WARNING|ERROR|CRITICAL)\]", log), log
    for secret in emulator.secrets():
        assert secret not in log
