"""The emulator: every managed identity endpoint, with the real wire formats, on loopback."""

from __future__ import annotations

import os
import secrets
import shutil
import ssl
import tempfile
import time
import uuid
import weakref
from collections.abc import Callable
from types import TracebackType
from typing import Any

from aiohttp import web

from .._constants import IMDS_TOKEN_PATH
from .._constants import EnvironmentVariables as Env
from .._models import ManagedIdentitySource
from . import _crypto
from ._admin import AdminApi, jwks
from ._dispatch import Dispatcher
from ._faults import Fault, RecordedRequest
from ._guard import loopback_only
from ._handlers import Endpoints
from ._identities import (
    DEFAULT_TENANT_ID,
    FEDERATED_SUBJECT,
    EmulatedIdentity,
    federated_token,
)
from ._recording import DEFAULT_HISTORY, DEFAULT_WAIT, Gate, Ring

APP_SERVICE_PATH = "/msi/token"
AZURE_ARC_PATH = "/arc/token"
AZURE_ML_PATH = "/azureml/token"
CLOUD_SHELL_PATH = "/cloudshell/token"
ENTRA_TOKEN_PATH = "/{tenant}/oauth2/v2.0/token"

_S = ManagedIdentitySource
SourceName = ManagedIdentitySource | str


class Emulator:
    """Local managed identity endpoints for every hosting source, on 127.0.0.1.

    Plain HTTP serves IMDS, App Service, Azure Arc, Azure ML and Cloud Shell; HTTPS (a generated
    certificate, ``ca_file``) serves Service Fabric and Microsoft Entra ID's token endpoint for
    workload identity. Tokens are RS256 JWTs (``aud`` = resource, ``iss``
    ``https://sts.windows.net/<tenant>/``, ``tid``, ``oid``, ``appid``, ``iat``, ``nbf``,
    ``exp``, and for managed identities ``xms_mirid``, the identity's resource ID), signed with
    a key published at ``/emulator/jwks``.

    Every token request is recorded in :attr:`requests` as it arrives. Tests wait for requests
    and responses with :meth:`wait_for_requests` and :meth:`wait_for_responses`, and keep
    requests in flight with :meth:`hold`, instead of sleeping.

    It answers only requests addressed to a loopback name (``Host`` ``localhost``, 127.x.y.z or
    ``[::1]``, any port) and none from another site's web page: others get 403 (see
    :mod:`~mi_credential.emulator._guard`).

    Args:
        clock: Wall clock for token times (default :func:`time.time`).
        token_lifetime: Seconds a token lives.
        refresh_in: If set, token responses carry this ``refresh_in``.
        tenant_id: The tenant tokens are issued in.
        system_assigned: Whether a system-assigned identity exists.
        user_assigned: The user-assigned identities that exist.
        secret: The App Service / Service Fabric / Azure ML secret (random by default).
        arc_key_dir: Where Azure Arc challenge key files are written (a temporary directory by
            default); clients are pointed at it by :meth:`client_options`.
        arc_echo_identity: Whether the Arc agent honours and echoes user-assigned identities.
        expires_on_format: Azure ML's ``expires_on``: ``"epoch"`` or ``"date"``.
        latency: Seconds added before each token response (real time: for demos and benchmarks;
            tests keep a request in flight with :meth:`hold`).
        host: Address to listen on (loopback only).
        port: HTTP port (0: any free port).
        https_port: HTTPS port (0: any free port).
        history: How many of the latest token requests (:attr:`requests`), access tokens
            (:attr:`issued_tokens`) and Azure Arc keys it keeps (10 000 by default), so that a
            long run stays within bounds; ``None`` keeps all of them. :meth:`secrets` lists
            the tokens and keys kept: a test that issues more and scans for every one of them
            passes a larger ``history`` or ``None``.
    """

    def __init__(
        self,
        *,
        clock: Callable[[], float] | None = None,
        token_lifetime: int = 86400,
        refresh_in: int | None = None,
        tenant_id: str = DEFAULT_TENANT_ID,
        system_assigned: bool = True,
        user_assigned: tuple[EmulatedIdentity, ...] | None = None,
        secret: str | None = None,
        arc_key_dir: str | None = None,
        arc_echo_identity: bool = True,
        expires_on_format: str = "epoch",
        latency: float = 0.0,
        host: str = "127.0.0.1",
        port: int = 0,
        https_port: int = 0,
        history: int | None = DEFAULT_HISTORY,
    ) -> None:
        if host not in ("127.0.0.1", "::1", "localhost"):
            raise ValueError("The emulator listens on loopback only.")
        self.issued_tokens: Ring[str] = Ring(history)
        """The access tokens issued, in order: the latest ``history`` of them."""
        self.history = history
        self.clock = clock or time.time
        self.token_lifetime = token_lifetime
        self.refresh_in = refresh_in
        self.tenant_id = tenant_id
        self.system_identity: EmulatedIdentity | None = (
            EmulatedIdentity.create("system") if system_assigned else None
        )
        self.user_identities = (
            user_assigned if user_assigned is not None else (EmulatedIdentity.create("uami-1"),)
        )
        self.workload_client_id = str(uuid.uuid4())
        self.secret = secret or secrets.token_urlsafe(24)
        self.arc_echo_identity = arc_echo_identity
        self.expires_on_format = expires_on_format
        self.latency = latency
        self.faults: list[Fault] = []
        self._dispatcher = Dispatcher(self)
        self._log = self._dispatcher.log
        self._endpoints = Endpoints(self)
        self._host = host
        self._port = port
        self._https_port = https_port
        self._workdir = tempfile.mkdtemp(prefix="mi-emulator-")  # gone with close() or with us
        self._remove_workdir = weakref.finalize(self, shutil.rmtree, self._workdir, True)
        self.arc_key_dir = arc_key_dir or os.path.join(self._workdir, "arc-tokens")
        os.makedirs(self.arc_key_dir, mode=0o700, exist_ok=True)
        self._runners: list[web.AppRunner] = []
        self.http_url = ""
        self.https_url = ""
        tls = _crypto.tls_material()
        self.thumbprint = tls.thumbprint
        self.ca_file = self._write("ca.pem", tls.ca_pem)
        self._cert_file = self._write("server.pem", tls.cert_pem)
        self._key_file = self._write("server.key", tls.key_pem)
        self.token_file = os.path.join(self._workdir, "federated-token")

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> Emulator:
        """Start listening. Returns the emulator.

        A start that fails (such as on a port in use) closes the emulator, its temporary files
        included, before the error propagates: ``async with`` does not call :meth:`close` then.
        """
        endpoints, route = self._endpoints, self._dispatcher.route
        http_app = web.Application(middlewares=[loopback_only])
        http_app.router.add_get(IMDS_TOKEN_PATH, route(_S.IMDS, endpoints.imds))
        http_app.router.add_get(APP_SERVICE_PATH, route(_S.APP_SERVICE, endpoints.app_service))
        http_app.router.add_get(AZURE_ARC_PATH, route(_S.AZURE_ARC, endpoints.azure_arc))
        http_app.router.add_get(AZURE_ML_PATH, route(_S.AZURE_ML, endpoints.azure_ml))
        http_app.router.add_post(CLOUD_SHELL_PATH, route(_S.CLOUD_SHELL, endpoints.cloud_shell))
        AdminApi(self).add_routes(http_app)
        https_app = web.Application(middlewares=[loopback_only])
        fabric = route(_S.SERVICE_FABRIC, endpoints.service_fabric)
        https_app.router.add_get(IMDS_TOKEN_PATH, fabric)
        https_app.router.add_post(ENTRA_TOKEN_PATH, route(_S.WORKLOAD_IDENTITY, endpoints.entra))
        https_app.router.add_get("/emulator/jwks", jwks)

        try:
            ssl_context = self.server_ssl_context()
            http_port = await self._serve(http_app, self._port, None)
            https_port = await self._serve(https_app, self._https_port, ssl_context)
            host = f"[{self._host}]" if ":" in self._host else self._host
            self.http_url = f"http://{host}:{http_port}"
            self.https_url = f"https://{host}:{https_port}"
            self._write("federated-token", self.federated_token().encode())
        except BaseException:
            await self.close()
            raise
        return self

    async def _serve(self, app: web.Application, port: int, ctx: ssl.SSLContext | None) -> int:
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await runner.setup()
        self._runners.append(runner)
        return await _listen(runner, self._host, port, ctx)

    async def close(self) -> None:
        """Release held responses, end hangs, stop listening and remove the temporary files."""
        self._dispatcher.close()
        try:
            for runner in self._runners:
                await runner.cleanup()
        finally:
            self._runners.clear()
            self._remove_workdir()

    async def __aenter__(self) -> Emulator:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- configuration for clients --------------------------------------------------------------

    def environ(self, source: ManagedIdentitySource | str) -> dict[str, str]:
        """The environment variables that make a client use ``source`` at this emulator."""
        return _environ(self, ManagedIdentitySource(source))

    def server_ssl_context(self) -> ssl.SSLContext:
        """A server-side TLS context with the emulator's certificate (for ``localhost``,
        127.0.0.1 and ::1, signed by the CA in :attr:`ca_file`): for other loopback services
        next to the emulator that its clients should trust too."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self._cert_file, self._key_file)
        return context

    def client_options(self, source: ManagedIdentitySource | str) -> dict[str, Any]:
        """Keyword arguments that make a :class:`~mi_credential.ManagedIdentityCredential` use
        ``source`` at this emulator: its environment, the CA that signed the emulator's HTTPS
        certificate, and the directory Azure Arc key files are written to."""
        return {
            "environ": self.environ(source),
            "connection_verify": self.ca_file,
            "arc_key_directory": self.arc_key_dir,
        }

    def add_fault(self, fault: Fault) -> Fault:
        """Script a misbehaviour (applies to the next ``fault.times`` matching requests)."""
        self.faults.append(fault)
        return fault

    @property
    def requests(self) -> list[RecordedRequest]:
        """The token requests received, in arrival order, with their status once answered: the
        latest ``history`` of them. Clear it to start counting again."""
        return self._log.entries

    def requests_for(self, source: ManagedIdentitySource | str) -> list[RecordedRequest]:
        """The token requests ``source``'s endpoint received."""
        return self._log.matching(ManagedIdentitySource(source).value)

    @property
    def issued(self) -> int:
        """How many tokens were issued (successful token responses) since
        :attr:`issued_tokens` was last cleared, including those it no longer keeps."""
        return len(self.issued_tokens) + getattr(self.issued_tokens, "dropped", 0)

    def secrets(self) -> list[str]:
        """The secrets this emulator handed out: the endpoint secret, the access tokens and Arc
        keys it keeps (the latest ``history``) and the federated token. None of them may ever
        appear in a log, span or message."""
        values = [self.secret, *self.issued_tokens, *self._endpoints.arc_keys]
        if os.path.exists(self.token_file):
            with open(self.token_file, encoding="utf-8") as handle:
                values.append(handle.read())
        return values

    def federated_token(self, *, subject: str = FEDERATED_SUBJECT, lifetime: int = 3600) -> str:
        """A Kubernetes-style service account token for workload identity."""
        return federated_token(f"{self.http_url}/oidc", subject, int(self.clock()), lifetime)

    def verify(self, token: str, *, audience: str | None = None) -> dict[str, Any]:
        """Check a token the emulator issued (signature, audience, times); return its claims.

        Raises:
            jwt.InvalidTokenError: It fails a check.
        """
        return _crypto.verify(token, audience=audience, now=self.clock())

    @staticmethod
    def public_key_pem() -> bytes:
        """The public key tokens are signed with (PEM)."""
        return _crypto.public_key_pem()

    # -- waiting on events ----------------------------------------------------------------------

    async def wait_for_requests(
        self, count: int = 1, *, source: SourceName | None = None, timeout: float = DEFAULT_WAIT
    ) -> list[RecordedRequest]:
        """Wait until :attr:`requests` holds at least ``count`` token requests (of ``source``,
        if given). A request counts as soon as it is recorded, before any hold, latency or
        fault, so a held request counts.

        Returns:
            The matching requests (possibly more than ``count``).

        Raises:
            TimeoutError: Fewer arrived within ``timeout`` seconds (real time); the message lists
                what did arrive.
        """
        return await self._log.wait(count, source=source, responded=False, timeout=timeout)

    async def wait_for_responses(
        self, count: int = 1, *, source: SourceName | None = None, timeout: float = DEFAULT_WAIT
    ) -> list[RecordedRequest]:
        """Wait until at least ``count`` token requests in :attr:`requests` (of ``source``, if
        given) have been answered: their status is recorded and the response is written to the
        connection (or the connection is gone, as a ``drop`` fault leaves it). The client may
        not have read the response yet.

        Returns:
            The requests answered (possibly more than ``count``).

        Raises:
            TimeoutError: Fewer were answered within ``timeout`` seconds (real time); the message
                says how many arrived, were answered and are held.
        """
        return await self._log.wait(count, source=source, responded=True, timeout=timeout)

    def hold(self) -> Gate:
        """Hold every token response until :meth:`release`: requests are still received and
        recorded (so :meth:`wait_for_requests` sees them), then wait before their endpoint
        answers. Keeps requests in flight for as long as a test needs, without sleeping.

        Use as ``with emulator.hold(): ...`` to release on leaving the block. :meth:`close`
        releases too, so nothing is left hanging.
        """
        return self._dispatcher.gate.close()

    def release(self) -> None:
        """Let every held token request through, and stop holding the ones that follow."""
        self._dispatcher.gate.open()

    @property
    def held(self) -> int:
        """How many token requests are being held now (see :meth:`hold`)."""
        return self._dispatcher.gate.held

    def _write(self, name: str, data: bytes) -> str:
        path = os.path.join(self._workdir, name)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
        return path



async def _listen(runner: web.AppRunner, host: str, port: int, ctx: ssl.SSLContext | None) -> int:
    """Start a site of ``runner`` on ``host``; return the port it is bound to."""
    site = web.TCPSite(runner, host, port, ssl_context=ctx)
    await site.start()
    server = site._server
    assert server is not None
    sockets = getattr(server, "sockets", None)
    assert sockets
    bound: int = sockets[0].getsockname()[1]
    return bound


def _environ(emulator: Emulator, source: ManagedIdentitySource) -> dict[str, str]:
    """The environment variables that make a client use ``source`` at ``emulator``."""
    if source is _S.IMDS:
        return {Env.AZURE_POD_IDENTITY_AUTHORITY_HOST: emulator.http_url}
    if source is _S.APP_SERVICE:
        return {
            Env.IDENTITY_ENDPOINT: emulator.http_url + APP_SERVICE_PATH,
            Env.IDENTITY_HEADER: emulator.secret,
        }
    if source is _S.AZURE_ARC:
        return {
            Env.IDENTITY_ENDPOINT: emulator.http_url + AZURE_ARC_PATH,
            Env.IMDS_ENDPOINT: emulator.http_url,
        }
    if source is _S.SERVICE_FABRIC:
        return {
            Env.IDENTITY_ENDPOINT: emulator.https_url + IMDS_TOKEN_PATH,
            Env.IDENTITY_HEADER: emulator.secret,
            Env.IDENTITY_SERVER_THUMBPRINT: emulator.thumbprint,
        }
    if source is _S.AZURE_ML:
        return {
            Env.MSI_ENDPOINT: emulator.http_url + AZURE_ML_PATH,
            Env.MSI_SECRET: emulator.secret,
        }
    if source is _S.CLOUD_SHELL:
        return {Env.MSI_ENDPOINT: emulator.http_url + CLOUD_SHELL_PATH}
    return {
        Env.AZURE_AUTHORITY_HOST: emulator.https_url,
        Env.AZURE_TENANT_ID: emulator.tenant_id,
        Env.AZURE_CLIENT_ID: emulator.workload_client_id,
        Env.AZURE_FEDERATED_TOKEN_FILE: emulator.token_file,
    }
