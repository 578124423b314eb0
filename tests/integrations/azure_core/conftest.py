"""Fixtures for the azure-core integration: a TLS certificate for 127.0.0.1, the Azure Storage
emulator (Azurite) over HTTPS with OAuth, a scriptable HTTPS resource server, and a clock that
starts near real time (Azurite checks ``nbf``/``exp`` against its own clock)."""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web

from mi_credential.emulator._crypto import tls_material
from tests.conftest import FakeClock

REPO_ROOT = Path(__file__).resolve().parents[3]
AZURITE_MAIN = REPO_ROOT / "node_modules" / "azurite" / "dist" / "src" / "blob" / "main.js"
#: npm writes this last, once an install is complete.
NPM_INSTALLED = REPO_ROOT / "node_modules" / ".package-lock.json"
ACCOUNT = "devstoreaccount1"
STORAGE_SCOPE = "https://storage.azure.com/.default"
#: How far behind real time the clock starts: a token issued then is 12 h old and past its
#: refresh time (half of its 24 h life) only after the clock moves forward by that much.
CLOCK_LAG = 12 * 3600 + 600
NPM_CI_TIMEOUT = 600
AZURITE_START_TIMEOUT = 60


@dataclass(frozen=True)
class Tls:
    """A CA and a server certificate for 127.0.0.1 and localhost it signed (PEM files)."""

    ca_file: str
    cert_file: str
    key_file: str

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert_file, self.key_file)
        return context

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.ca_file)


@pytest.fixture(scope="session")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Tls:
    """A CA and a server certificate for 127.0.0.1 (the emulator's), as files for Azurite."""
    material = tls_material()
    directory = tmp_path_factory.mktemp("tls")
    ca_file = directory / "ca.pem"
    cert_file = directory / "server.pem"
    key_file = directory / "server.key"
    ca_file.write_bytes(material.ca_pem)
    cert_file.write_bytes(material.cert_pem)
    key_file.write_bytes(material.key_pem)
    return Tls(str(ca_file), str(cert_file), str(key_file))


# -- Azurite ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Azurite:
    """A running Azurite blob service."""

    url: str
    ca_file: str

    @property
    def account_url(self) -> str:
        return f"{self.url}/{ACCOUNT}"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _ensure_azurite_installed(npm: str | None) -> None:
    """``npm ci`` from the lock file if Azurite is not installed yet (a fresh clone), or an
    earlier install did not finish."""
    if AZURITE_MAIN.exists() and NPM_INSTALLED.exists():
        return
    if npm is None:
        pytest.fail("Azurite is not installed and npm is missing: run `npm ci` at the repo root.")
    result = subprocess.run(
        [npm, "ci", "--no-audit", "--no-fund"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=NPM_CI_TIMEOUT,
        check=False,
    )
    if result.returncode != 0 or not (AZURITE_MAIN.exists() and NPM_INSTALLED.exists()):
        pytest.fail(f"`npm ci` could not install Azurite:\n{result.stdout}\n{result.stderr}")


def _wait_until_listening(process: subprocess.Popen[bytes], port: int, tls: Tls) -> bool:
    """Whether Azurite completes a TLS handshake on ``port`` (``False``: it exited first, as
    when the port was taken). Stops it and fails if it does neither in time."""
    context = tls.client_context()
    deadline = time.monotonic() + AZURITE_START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        try:
            with (
                socket.create_connection(("127.0.0.1", port), timeout=1) as raw,
                context.wrap_socket(raw, server_hostname="127.0.0.1"),
            ):
                return True
        except OSError:
            time.sleep(0.1)
    _stop(process)
    raise TimeoutError(f"Azurite did not listen on port {port} within {AZURITE_START_TIMEOUT} s")


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


@pytest.fixture(scope="session")
def azurite(tls: Tls, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    """Azurite's blob service on 127.0.0.1 over HTTPS with ``--oauth basic``."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: the Azurite tests need Node.js (CI has it)")
    _ensure_azurite_installed(shutil.which("npm"))
    workspace = tmp_path_factory.mktemp("azurite")
    log_file = workspace / "azurite.log"
    for _ in range(3):  # Azurite cannot take port 0: retry if the chosen port was taken meanwhile
        port = _free_port()
        with open(log_file, "wb") as log:
            process = subprocess.Popen(
                [
                    node,
                    str(AZURITE_MAIN),
                    "--blobHost",
                    "127.0.0.1",
                    "--blobPort",
                    str(port),
                    "--oauth",
                    "basic",
                    "--cert",
                    tls.cert_file,
                    "--key",
                    tls.key_file,
                    "--location",
                    str(workspace),
                    "--disableTelemetry",
                    "--skipApiVersionCheck",
                    "--silent",
                ],
                cwd=REPO_ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "NODE_NO_WARNINGS": "1"},
            )
        try:
            listening = _wait_until_listening(process, port, tls)
        except TimeoutError as exc:
            pytest.fail(f"{exc}:\n{log_file.read_text()}")
        if listening:
            break
        process.wait(timeout=10)
    else:
        pytest.fail(f"Azurite did not start:\n{log_file.read_text()}")
    try:
        yield Azurite(url=f"https://127.0.0.1:{port}", ca_file=tls.ca_file)
    finally:
        _stop(process)


# -- a clock near real time --------------------------------------------------------------------


@pytest.fixture
def clock() -> FakeClock:
    """The emulator's and the credential's clock, starting ``CLOCK_LAG`` behind real time.

    Azurite compares ``nbf``/``exp`` with real time, so tokens must be issued at or before it:
    a test moves this clock forward by up to ``CLOCK_LAG`` to reach a token's refresh time.
    """
    return FakeClock(start=float(int(time.time()) - CLOCK_LAG))


# -- a scriptable HTTPS resource server ----------------------------------------------------------


Reply = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class ResourceServer:
    """An HTTPS server on 127.0.0.1 standing in for an Azure service: it records the
    ``Authorization`` header of each request and answers with the scripted replies, then 200."""

    url: str = ""
    http_url: str = ""
    """The same server over plain HTTP (for ``enforce_https=False``)."""
    authorizations: list[str | None] = field(default_factory=list)
    replies: list[Reply] = field(default_factory=list)

    def tokens(self) -> list[str]:
        return [a.removeprefix("Bearer ") for a in self.authorizations if a]


@pytest.fixture
async def resource_server(tls: Tls) -> AsyncIterator[ResourceServer]:
    server = ResourceServer()

    async def handle(request: web.Request) -> web.StreamResponse:
        server.authorizations.append(request.headers.get("Authorization"))
        if server.replies:
            return await server.replies.pop(0)(request)
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls.server_context()).start()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    server.url = f"https://127.0.0.1:{runner.addresses[0][1]}"
    server.http_url = f"http://127.0.0.1:{runner.addresses[1][1]}"
    try:
        yield server
    finally:
        await runner.cleanup()
