"""The emulator: every managed identity endpoint, with the real wire formats, on loopback."""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import ssl
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from types import TracebackType
from typing import Any

from aiohttp import web

from .._constants import (
    APP_SERVICE_API_VERSION,
    AZURE_ARC_API_VERSION,
    AZURE_ML_API_VERSION,
    CLIENT_ASSERTION_TYPE,
    IMDS_API_VERSION,
    IMDS_TOKEN_PATH,
    SERVICE_FABRIC_API_VERSION,
)
from .._constants import EnvironmentVariables as Env
from .._models import ManagedIdentitySource
from . import _crypto
from ._faults import Fault, RecordedRequest

DEFAULT_TENANT_ID = "72f988bf-0000-4000-8000-00000000e1a7"
FEDERATED_AUDIENCE = "api://AzureADTokenExchange"
FEDERATED_SUBJECT = "system:serviceaccount:default:workload"

APP_SERVICE_PATH = "/msi/token"
AZURE_ARC_PATH = "/arc/token"
AZURE_ML_PATH = "/azureml/token"
CLOUD_SHELL_PATH = "/cloudshell/token"

_S = ManagedIdentitySource


@dataclass(frozen=True)
class EmulatedIdentity:
    """A managed identity the emulator knows: its three identifiers."""

    client_id: str
    object_id: str
    resource_id: str

    @classmethod
    def create(
        cls, name: str, subscription: str = "00000000-0000-0000-0000-000000000000"
    ) -> EmulatedIdentity:
        """An identity with fresh identifiers; ``name`` goes in its ARM resource ID."""
        return cls(
            client_id=str(uuid.uuid4()),
            object_id=str(uuid.uuid4()),
            resource_id=(
                f"/subscriptions/{subscription}/resourcegroups/emulator/providers/"
                f"Microsoft.ManagedIdentity/userAssignedIdentities/{name}"
            ),
        )


class _Reject(Exception):
    """A request the endpoint refuses, with its status and JSON body."""

    def __init__(
        self, status: int, body: Mapping[str, Any], headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(status)
        self.status = status
        self.body = body
        self.headers = dict(headers or {})


class Emulator:
    """Local managed identity endpoints for every hosting source, on 127.0.0.1.

    Plain HTTP serves IMDS, App Service, Azure Arc, Azure ML and Cloud Shell; HTTPS (a generated
    certificate, ``ca_file``) serves Service Fabric and Microsoft Entra ID's token endpoint for
    workload identity. Tokens are RS256 JWTs (``aud`` = resource, ``iss``
    ``https://sts.windows.net/<tenant>/``, ``tid``, ``oid``, ``appid``, ``iat``, ``nbf``,
    ``exp``), signed with a key published at ``/emulator/jwks``.

    Args:
        clock: Wall clock for token times (default :func:`time.time`).
        token_lifetime: Seconds a token lives.
        refresh_in: If set, token responses carry this ``refresh_in``.
        tenant_id: The tenant tokens are issued in.
        system_assigned: Whether a system-assigned identity exists.
        user_assigned: The user-assigned identities that exist.
        secret: The App Service / Service Fabric / Azure ML secret (random by default).
        arc_key_dir: Where Azure Arc challenge key files are written (a temporary directory by
            default); point :data:`mi_credential._constants.ARC_KEY_DIRECTORY` at it.
        arc_echo_identity: Whether the Arc agent honours and echoes user-assigned identities.
        expires_on_format: Azure ML's ``expires_on``: ``"epoch"`` or ``"date"``.
        latency: Seconds added before each token response (real time).
        host: Address to listen on (loopback only).
        port: HTTP port (0: any free port).
        https_port: HTTPS port (0: any free port).
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
    ) -> None:
        if host not in ("127.0.0.1", "::1", "localhost"):
            raise ValueError("The emulator listens on loopback only.")
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
        self.requests: list[RecordedRequest] = []
        self._host = host
        self._port = port
        self._https_port = https_port
        self._workdir = tempfile.mkdtemp(prefix="mi-emulator-")
        self.arc_key_dir = arc_key_dir or os.path.join(self._workdir, "arc-tokens")
        os.makedirs(self.arc_key_dir, mode=0o700, exist_ok=True)
        self._arc_keys: dict[str, str] = {}
        self._runners: list[web.AppRunner] = []
        self._closing = asyncio.Event()
        self.http_url = ""
        self.https_url = ""
        tls = _crypto.tls_material()
        self.thumbprint = tls.thumbprint
        self.ca_file = self._write("ca.pem", tls.ca_pem)
        self._cert_file = self._write("server.pem", tls.cert_pem)
        self._key_file = self._write("server.key", tls.key_pem)
        self.token_file = os.path.join(self._workdir, "federated-token")
        self.issued_tokens: list[str] = []
        """Every access token issued, in order."""

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> Emulator:
        """Start listening. Returns the emulator."""
        http_app = web.Application()
        http_app.router.add_get(IMDS_TOKEN_PATH, self._route(_S.IMDS, self._imds))
        http_app.router.add_get(APP_SERVICE_PATH, self._route(_S.APP_SERVICE, self._app_service))
        http_app.router.add_get(AZURE_ARC_PATH, self._route(_S.AZURE_ARC, self._azure_arc))
        http_app.router.add_get(AZURE_ML_PATH, self._route(_S.AZURE_ML, self._azure_ml))
        http_app.router.add_post(CLOUD_SHELL_PATH, self._route(_S.CLOUD_SHELL, self._cloud_shell))
        self._add_admin_routes(http_app)
        https_app = web.Application()
        https_app.router.add_get(
            IMDS_TOKEN_PATH, self._route(_S.SERVICE_FABRIC, self._service_fabric)
        )
        https_app.router.add_post(
            "/{tenant}/oauth2/v2.0/token",
            self._route(_S.WORKLOAD_IDENTITY, self._entra),
        )
        https_app.router.add_get("/emulator/jwks", self._jwks)

        ssl_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ssl_context.load_cert_chain(self._cert_file, self._key_file)
        http_port = await self._serve(http_app, self._port, None)
        https_port = await self._serve(https_app, self._https_port, ssl_context)
        host = f"[{self._host}]" if ":" in self._host else self._host
        self.http_url = f"http://{host}:{http_port}"
        self.https_url = f"https://{host}:{https_port}"
        self._write("federated-token", self.federated_token().encode())
        return self

    async def _serve(self, app: web.Application, port: int, ctx: ssl.SSLContext | None) -> int:
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await runner.setup()
        self._runners.append(runner)
        site = web.TCPSite(runner, self._host, port, ssl_context=ctx)
        await site.start()
        server = site._server
        assert server is not None
        sockets = getattr(server, "sockets", None)
        assert sockets
        bound: int = sockets[0].getsockname()[1]
        return bound

    async def close(self) -> None:
        """Stop listening and remove the temporary files."""
        self._closing.set()
        for runner in self._runners:
            await runner.cleanup()
        self._runners.clear()
        shutil.rmtree(self._workdir, ignore_errors=True)

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
        source = ManagedIdentitySource(source)
        if source is _S.IMDS:
            return {Env.AZURE_POD_IDENTITY_AUTHORITY_HOST: self.http_url}
        if source is _S.APP_SERVICE:
            return {
                Env.IDENTITY_ENDPOINT: self.http_url + APP_SERVICE_PATH,
                Env.IDENTITY_HEADER: self.secret,
            }
        if source is _S.AZURE_ARC:
            return {
                Env.IDENTITY_ENDPOINT: self.http_url + AZURE_ARC_PATH,
                Env.IMDS_ENDPOINT: self.http_url,
            }
        if source is _S.SERVICE_FABRIC:
            return {
                Env.IDENTITY_ENDPOINT: self.https_url + IMDS_TOKEN_PATH,
                Env.IDENTITY_HEADER: self.secret,
                Env.IDENTITY_SERVER_THUMBPRINT: self.thumbprint,
            }
        if source is _S.AZURE_ML:
            return {Env.MSI_ENDPOINT: self.http_url + AZURE_ML_PATH, Env.MSI_SECRET: self.secret}
        if source is _S.CLOUD_SHELL:
            return {Env.MSI_ENDPOINT: self.http_url + CLOUD_SHELL_PATH}
        return {
            Env.AZURE_AUTHORITY_HOST: self.https_url,
            Env.AZURE_TENANT_ID: self.tenant_id,
            Env.AZURE_CLIENT_ID: self.workload_client_id,
            Env.AZURE_FEDERATED_TOKEN_FILE: self.token_file,
        }

    def add_fault(self, fault: Fault) -> Fault:
        """Script a misbehaviour (applies to the next ``fault.times`` matching requests)."""
        self.faults.append(fault)
        return fault

    def requests_for(self, source: ManagedIdentitySource | str) -> list[RecordedRequest]:
        """The token requests ``source``'s endpoint received."""
        name = ManagedIdentitySource(source).value
        return [r for r in self.requests if r.source == name]

    @property
    def issued(self) -> int:
        """How many tokens were issued (successful token responses)."""
        return len(self.issued_tokens)

    def secrets(self) -> list[str]:
        """Every secret this emulator handed out: the endpoint secret, access tokens, Arc keys
        and the federated token. None of them may ever appear in a log, span or message."""
        values = [self.secret, *self.issued_tokens, *self._arc_keys]
        if os.path.exists(self.token_file):
            with open(self.token_file, encoding="utf-8") as handle:
                values.append(handle.read())
        return values

    def federated_token(self, *, subject: str = FEDERATED_SUBJECT, lifetime: int = 3600) -> str:
        """A Kubernetes-style service account token for workload identity."""
        now = int(self.clock())
        return _crypto.mint(
            {
                "iss": f"{self.http_url}/oidc",
                "sub": subject,
                "aud": [FEDERATED_AUDIENCE],
                "iat": now,
                "nbf": now,
                "exp": now + lifetime,
            }
        )

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

    # -- request handling -----------------------------------------------------------------------

    def _route(
        self,
        source: ManagedIdentitySource,
        handler: Callable[[web.Request, RecordedRequest], Awaitable[dict[str, Any]]],
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def serve(request: web.Request) -> web.StreamResponse:
            form = None
            if request.method == "POST":
                form = tuple((k, str(v)) for k, v in (await request.post()).items())
            record = RecordedRequest(
                source=source.value,
                method=request.method,
                path=request.path,
                query=tuple(request.query.items()),
                headers={k.lower(): v for k, v in request.headers.items()},
                form=form,
                time=self.clock(),
            )
            index = len(self.requests)
            self.requests.append(record)
            response = await self._respond(source, request, record, handler)
            self.requests[index] = replace(record, status=response.status)
            return response

        return serve

    async def _respond(
        self,
        source: ManagedIdentitySource,
        request: web.Request,
        record: RecordedRequest,
        handler: Callable[[web.Request, RecordedRequest], Awaitable[dict[str, Any]]],
    ) -> web.StreamResponse:
        if self.latency:
            await asyncio.sleep(self.latency)
        fault = self._take_fault(source)
        if fault is not None:
            if fault.delay:
                await asyncio.sleep(fault.delay)
            if not fault.passes_through:
                return await self._misbehave(fault, request, record)
        try:
            body = await handler(request, record)
        except _Reject as reject:
            return web.json_response(reject.body, status=reject.status, headers=reject.headers)
        self.issued_tokens.append(body["access_token"])
        return web.json_response(body)

    def _take_fault(self, source: ManagedIdentitySource) -> Fault | None:
        for fault in self.faults:
            if fault.source in (None, source.value) and (fault.times is None or fault.times > 0):
                if fault.skip > 0:
                    fault.skip -= 1
                    return None
                if fault.times is not None:
                    fault.times -= 1
                return fault
        return None

    async def _misbehave(
        self, fault: Fault, request: web.Request, record: RecordedRequest
    ) -> web.StreamResponse:
        transport = request.transport
        if fault.action == "hang":
            await self._closing.wait()
            return web.Response(status=503)
        if fault.action == "drop":
            if transport is not None:
                transport.abort()
            return web.Response(status=499)
        if fault.action == "reset":
            body = b'{"access_token": "' + b"x" * 512 + b'", "expires_in": "3600"}'
            response = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
            response.content_length = len(body)
            await response.prepare(request)
            await response.write(body[: len(body) // 2])
            if transport is not None:
                transport.abort()
            return response
        return web.Response(
            status=fault.status,
            body=fault.body_bytes(record),
            headers={"Content-Type": fault.content_type, **fault.headers},
        )

    # -- per-source endpoints -------------------------------------------------------------------

    def _claims(
        self, resource: str, identity: EmulatedIdentity, *, app: bool = False
    ) -> dict[str, Any]:
        now = int(self.clock())
        claims: dict[str, Any] = {
            "aud": resource,
            "iss": f"https://sts.windows.net/{self.tenant_id}/",
            "iat": now,
            "nbf": now,
            "exp": now + self.token_lifetime,
            "tid": self.tenant_id,
            "oid": identity.object_id,
            "sub": identity.object_id,
            "appid": identity.client_id,
            "idtyp": "app",
            "ver": "1.0",
        }
        if not app and identity is not self.system_identity:
            claims["xms_mirid"] = identity.resource_id
        return claims

    def _token(
        self, resource: str, identity: EmulatedIdentity, *, app: bool = False
    ) -> dict[str, Any]:
        claims = self._claims(resource, identity, app=app)
        body: dict[str, Any] = {
            "access_token": _crypto.mint(claims),
            "expires_in": str(self.token_lifetime),
            "expires_on": str(claims["exp"]),
            "ext_expires_in": str(self.token_lifetime),
            "not_before": str(claims["nbf"]),
            "resource": resource,
            "token_type": "Bearer",
        }
        if self.refresh_in is not None:
            body["refresh_in"] = self.refresh_in
        return body

    def _find_identity(
        self, selectors: Mapping[str, str], error: Callable[[str], _Reject]
    ) -> EmulatedIdentity:
        """The identity the request's selector names (none: system-assigned)."""
        if len(selectors) > 1:
            raise error("Only one of client_id, object_id or resource ID may be specified.")
        if not selectors:
            if self.system_identity is None:
                raise error("Identity not found")
            return self.system_identity
        ((kind, value),) = selectors.items()
        for identity in self.user_identities:
            if getattr(identity, kind).lower() == value.lower():
                return identity
        raise error("Identity not found")

    @staticmethod
    def _selectors(request: web.Request, names: Mapping[str, str]) -> dict[str, str]:
        return {names[k]: v for k, v in request.query.items() if k in names}

    @staticmethod
    def _require_api_version(
        request: web.Request, version: str, error: Callable[[str], _Reject]
    ) -> None:
        got = request.query.get("api-version")
        if got is None:
            raise error("Required query variable 'api-version' is missing")
        if got != version:
            raise error(f"Invalid API version {got!r}; this endpoint implements {version}")

    @staticmethod
    def _resource(value: str | None, error: Callable[[str], _Reject]) -> str:
        if not value:
            raise error("Required query variable 'resource' is missing")
        return value

    async def _imds(self, request: web.Request, record: RecordedRequest) -> dict[str, Any]:
        def error(description: str) -> _Reject:
            return _Reject(400, {"error": "invalid_request", "error_description": description})

        if request.headers.get("Metadata") != "true":
            raise error("Required metadata header not specified")
        self._require_api_version(request, IMDS_API_VERSION, error)
        resource = self._resource(request.query.get("resource"), error)
        identity = self._find_identity(
            self._selectors(
                request,
                {
                    "client_id": "client_id",
                    "object_id": "object_id",
                    "msi_res_id": "resource_id",
                    "mi_res_id": "resource_id",
                },
            ),
            error,
        )
        body = self._token(resource, identity)
        body["client_id"] = identity.client_id
        return body

    async def _app_service(self, request: web.Request, record: RecordedRequest) -> dict[str, Any]:
        if request.headers.get("X-IDENTITY-HEADER") != self.secret:
            raise _Reject(
                401,
                {
                    "statusCode": 401,
                    "message": "Unauthorized: X-IDENTITY-HEADER is missing or invalid.",
                },
            )

        def error(description: str) -> _Reject:
            return _Reject(
                400,
                {"statusCode": 400, "message": description, "correlationId": str(uuid.uuid4())},
            )

        self._require_api_version(request, APP_SERVICE_API_VERSION, error)
        resource = self._resource(request.query.get("resource"), error)
        identity = self._find_identity(
            self._selectors(
                request,
                {
                    "client_id": "client_id",
                    "object_id": "object_id",
                    "principal_id": "object_id",
                    "mi_res_id": "resource_id",
                },
            ),
            lambda d: error(f"Unable to load the proper Managed Identity. {d}"),
        )
        token = self._token(resource, identity)
        return {
            "access_token": token["access_token"],
            "expires_on": token["expires_on"],
            "resource": resource,
            "token_type": "Bearer",
            "client_id": identity.client_id,
        }

    async def _azure_arc(self, request: web.Request, record: RecordedRequest) -> dict[str, Any]:
        def error(description: str) -> _Reject:
            return _Reject(400, {"error": "invalid_request", "error_description": description})

        if request.headers.get("Metadata") != "true":
            raise error("Required metadata header not specified")
        self._require_api_version(request, AZURE_ARC_API_VERSION, error)
        authorization = request.headers.get("Authorization")
        if authorization is None:
            name = f"{uuid.uuid4()}.key"
            path = os.path.join(self.arc_key_dir, name)
            key = secrets.token_urlsafe(32)
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "w") as handle:
                handle.write(key)
            self._arc_keys[key] = path
            raise _Reject(
                401,
                {"error": "unauthorized", "error_description": "Key required"},
                {"WWW-Authenticate": f"Basic realm={path}"},
            )
        scheme, _, key = authorization.partition(" ")
        if scheme != "Basic" or key not in self._arc_keys:
            raise _Reject(401, {"error": "unauthorized", "error_description": "Invalid key"})
        resource = self._resource(request.query.get("resource"), error)
        selectors = self._selectors(
            request,
            {"client_id": "client_id", "object_id": "object_id", "msi_res_id": "resource_id"},
        )
        if not self.arc_echo_identity:
            selectors = {}
        identity = self._find_identity(selectors, error)
        body = self._token(resource, identity)
        body["client_id"] = identity.client_id
        if selectors:
            body["object_id"] = identity.object_id
            body["msi_res_id"] = identity.resource_id
        return body

    async def _azure_ml(self, request: web.Request, record: RecordedRequest) -> dict[str, Any]:
        def error(description: str) -> _Reject:
            return _Reject(400, {"error": "invalid_request", "error_description": description})

        if request.headers.get("secret") != self.secret:
            raise _Reject(401, {"error": "unauthorized", "error_description": "Invalid secret"})
        self._require_api_version(request, AZURE_ML_API_VERSION, error)
        resource = self._resource(request.query.get("resource"), error)
        identity = self._find_identity(
            self._selectors(
                request,
                {"clientid": "client_id", "object_id": "object_id", "msi_res_id": "resource_id"},
            ),
            error,
        )
        token = self._token(resource, identity)
        expires_on: str = token["expires_on"]
        if self.expires_on_format == "date":
            moment = datetime.fromtimestamp(int(expires_on), tz=timezone.utc)
            expires_on = moment.strftime("%m/%d/%Y %H:%M:%S +00:00")
        return {
            "access_token": token["access_token"],
            "expires_on": expires_on,
            "resource": resource,
            "token_type": "Bearer",
        }

    async def _cloud_shell(self, request: web.Request, record: RecordedRequest) -> dict[str, Any]:
        def error(description: str) -> _Reject:
            return _Reject(400, {"error": "invalid_request", "error_description": description})

        if request.headers.get("Metadata") != "true":
            raise error("Required metadata header not specified")
        resource = self._resource(record.form_field("resource"), error)
        if self.system_identity is None:
            raise error("Identity not found")
        token = self._token(resource, self.system_identity)
        token.pop("ext_expires_in")
        return token

    async def _service_fabric(
        self, request: web.Request, record: RecordedRequest
    ) -> dict[str, Any]:
        def error(code: str, message: str, status: int = 400) -> _Reject:
            return _Reject(
                status,
                {"error": {"correlationId": str(uuid.uuid4()), "code": code, "message": message}},
            )

        if request.headers.get("Secret") != self.secret:
            raise error("SecretHeaderNotFound", "Secret is not found in the request headers.", 401)
        self._require_api_version(
            request, SERVICE_FABRIC_API_VERSION, lambda d: error("InvalidApiVersion", d)
        )
        resource = self._resource(
            request.query.get("resource"), lambda d: error("ArgumentNullOrEmpty", d)
        )
        if self.system_identity is None:
            raise error("ManagedIdentityNotFound", "Managed identity not found.", 404)
        token = self._token(resource, self.system_identity)
        return {
            "token_type": "Bearer",
            "access_token": token["access_token"],
            "expires_on": int(token["expires_on"]),
            "resource": resource,
        }

    async def _entra(self, request: web.Request, record: RecordedRequest) -> dict[str, Any]:
        def error(code: str, description: str, status: int = 400) -> _Reject:
            return _Reject(
                status,
                {
                    "error": code,
                    "error_description": description,
                    "timestamp": datetime.now(timezone.utc).isoformat(),
                    "trace_id": str(uuid.uuid4()),
                    "correlation_id": str(uuid.uuid4()),
                },
            )

        tenant = request.match_info["tenant"]
        if tenant != self.tenant_id:
            raise error("invalid_tenant", f"AADSTS90002: Tenant '{tenant}' not found.")
        if record.form_field("grant_type") != "client_credentials":
            raise error("unsupported_grant_type", "AADSTS70003: grant_type is not supported.")
        if record.form_field("client_assertion_type") != CLIENT_ASSERTION_TYPE:
            raise error("invalid_request", "AADSTS50027: Invalid client_assertion_type.")
        client_id = record.form_field("client_id")
        if client_id != self.workload_client_id:
            raise error(
                "unauthorized_client",
                f"AADSTS700016: Application with identifier '{client_id}' was not found.",
            )
        try:
            claims = _crypto.verify(
                record.form_field("client_assertion") or "",
                audience=FEDERATED_AUDIENCE,
                now=self.clock(),
            )
        except Exception as exc:
            raise error(
                "invalid_client",
                f"AADSTS700024: Client assertion is not valid: {type(exc).__name__}",
                401,
            ) from None
        if claims.get("sub") != FEDERATED_SUBJECT:
            raise error(
                "invalid_client",
                "AADSTS700213: No matching federated identity record found for presented "
                f"assertion subject '{claims.get('sub')}'.",
                401,
            )
        scopes = (record.form_field("scope") or "").split()
        if len(scopes) != 1 or not scopes[0].endswith("/.default"):
            raise error(
                "invalid_scope",
                "AADSTS1002012: The provided value for scope is not valid. Client credential "
                "flows must have a scope value with /.default suffixed to the resource "
                "identifier (application ID URI).",
            )
        resource = scopes[0][: -len("/.default")]
        identity = EmulatedIdentity(client_id, str(uuid.uuid5(uuid.NAMESPACE_URL, client_id)), "")
        claims = self._claims(resource, identity, app=True)
        body: dict[str, Any] = {
            "token_type": "Bearer",
            "expires_in": self.token_lifetime,
            "ext_expires_in": self.token_lifetime,
            "access_token": _crypto.mint(claims),
        }
        if self.refresh_in is not None:
            body["refresh_in"] = self.refresh_in
        return body

    # -- admin ----------------------------------------------------------------------------------

    def _add_admin_routes(self, app: web.Application) -> None:
        app.router.add_get("/emulator/jwks", self._jwks)
        app.router.add_get("/emulator/ca.pem", self._ca)
        app.router.add_get("/emulator/requests", self._list_requests)
        app.router.add_delete("/emulator/requests", self._clear_requests)
        app.router.add_get("/emulator/faults", self._list_faults)
        app.router.add_post("/emulator/faults", self._add_fault)
        app.router.add_delete("/emulator/faults", self._clear_faults)
        app.router.add_get("/emulator/environment/{source}", self._environment)

    async def _jwks(self, request: web.Request) -> web.Response:
        return web.json_response(_crypto.jwks())

    async def _ca(self, request: web.Request) -> web.Response:
        return web.Response(
            body=_crypto.tls_material().ca_pem, content_type="application/x-pem-file"
        )

    async def _list_requests(self, request: web.Request) -> web.Response:
        return web.json_response([r.redacted() for r in self.requests])

    async def _clear_requests(self, request: web.Request) -> web.Response:
        self.requests.clear()
        return web.Response(status=204)

    async def _list_faults(self, request: web.Request) -> web.Response:
        return web.json_response(
            [
                {"source": f.source, "action": f.action, "status": f.status, "times": f.times}
                for f in self.faults
            ]
        )

    async def _add_fault(self, request: web.Request) -> web.Response:
        try:
            data = await request.json()
            faults = data if isinstance(data, list) else [data]
            added = [self.add_fault(Fault.from_json(item)) for item in faults]
        except (ValueError, TypeError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response({"added": len(added)}, status=201)

    async def _clear_faults(self, request: web.Request) -> web.Response:
        self.faults.clear()
        return web.Response(status=204)

    async def _environment(self, request: web.Request) -> web.Response:
        try:
            return web.json_response(self.environ(request.match_info["source"]))
        except ValueError:
            return web.json_response({"error": "unknown source"}, status=404)

    def _write(self, name: str, data: bytes) -> str:
        path = os.path.join(self._workdir, name)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
        return path
