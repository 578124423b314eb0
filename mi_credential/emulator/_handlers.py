"""The token endpoints, one handler per hosting source, each with its source's wire format: what
it requires of a request, how it refuses one, and the JSON it answers with."""

from __future__ import annotations

import contextlib
import os
import secrets
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextvars import ContextVar
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import jwt
from aiohttp import web

from .._constants import (
    APP_SERVICE_API_VERSION,
    AZURE_ARC_API_VERSION,
    AZURE_ML_API_VERSION,
    CLIENT_ASSERTION_TYPE,
    IMDS_API_VERSION,
    SERVICE_FABRIC_API_VERSION,
)
from . import _crypto
from ._faults import RecordedRequest
from ._identities import FEDERATED_AUDIENCE, FEDERATED_SUBJECT, EmulatedIdentity
from ._refusals import (
    Reject,
    app_service_error,
    entra_error,
    invalid_request,
    service_fabric_error,
)

if TYPE_CHECKING:
    from ._server import Emulator

#: Query parameters naming a user-assigned identity, per source -> the identifier they carry.
_C, _O, _R = "client_id", "object_id", "resource_id"
_IMDS_SELECTORS = {"client_id": _C, "object_id": _O, "msi_res_id": _R, "mi_res_id": _R}
_APP_SERVICE_SELECTORS = {"client_id": _C, "object_id": _O, "principal_id": _O, "mi_res_id": _R}
_AZURE_ARC_SELECTORS = {"client_id": _C, "object_id": _O, "msi_res_id": _R}
_AZURE_ML_SELECTORS = {"clientid": _C, "object_id": _O, "msi_res_id": _R}


ErrorFactory = Callable[[str], Reject]

_served_as: ContextVar[EmulatedIdentity | None] = ContextVar("served_as", default=None)


@contextlib.contextmanager
def serving_as(identity: EmulatedIdentity | None) -> Iterator[None]:
    """Within the block (the serving of one request), the endpoints answer for ``identity``
    whatever identity the request names, as a platform that ignores the identity selector does;
    ``None``: for the identity named."""
    reset = _served_as.set(identity)
    try:
        yield
    finally:
        _served_as.reset(reset)


def _require_metadata(request: web.Request) -> None:
    if request.headers.get("Metadata") != "true":
        raise invalid_request("Required metadata header not specified")


def _require_api_version(request: web.Request, version: str, error: ErrorFactory) -> None:
    got = request.query.get("api-version")
    if got is None:
        raise error("Required query variable 'api-version' is missing")
    if got != version:
        raise error(f"Invalid API version {got!r}; this endpoint implements {version}")


def _require_resource(value: str | None, error: ErrorFactory) -> str:
    if not value:
        raise error("Required query variable 'resource' is missing")
    return value


def _selectors(request: web.Request, names: Mapping[str, str]) -> dict[str, str]:
    return {names[k]: v for k, v in request.query.items() if k in names}


def _bearer(access_token: str, expires_on: Any, resource: str) -> dict[str, Any]:
    """The short body of App Service and Azure ML, in their key order."""
    return {
        "access_token": access_token,
        "expires_on": expires_on,
        "resource": resource,
        "token_type": "Bearer",
    }


class Endpoints:
    """The handlers of an emulator's token endpoints. They read the emulator's settings when a
    request comes (tests change them between requests) and hand out Azure Arc keys."""

    def __init__(self, emulator: Emulator) -> None:
        self._emulator = emulator
        self.arc_keys: dict[str, str] = {}
        """The Azure Arc challenge keys handed out -> the file each was written to: the latest
        ``history`` of them (an older key, and its file, are gone)."""

    # -- tokens ---------------------------------------------------------------------------------

    def claims(
        self, resource: str, identity: EmulatedIdentity, *, app: bool = False
    ) -> dict[str, Any]:
        """The claims of an access token for ``identity``; ``app``: an application's (workload
        identity), which carries no managed identity resource ID (``xms_mirid``)."""
        emulator = self._emulator
        now = int(emulator.clock())
        claims: dict[str, Any] = {
            "aud": resource,
            "iss": f"https://sts.windows.net/{emulator.tenant_id}/",
            "iat": now,
            "nbf": now,
            "exp": now + emulator.token_lifetime,
            "tid": emulator.tenant_id,
            "oid": identity.object_id,
            "sub": identity.object_id,
            "appid": identity.client_id,
            "idtyp": "app",
            "ver": "1.0",
        }
        if not app:
            claims["xms_mirid"] = identity.resource_id
        return claims

    def token(self, resource: str, identity: EmulatedIdentity) -> dict[str, Any]:
        """The full token body (IMDS's), which the other sources trim or reshape."""
        emulator = self._emulator
        claims = self.claims(resource, identity)
        body: dict[str, Any] = {
            "access_token": _crypto.mint(claims),
            "expires_in": str(emulator.token_lifetime),
            "expires_on": str(claims["exp"]),
            "ext_expires_in": str(emulator.token_lifetime),
            "not_before": str(claims["nbf"]),
            "resource": resource,
            "token_type": "Bearer",
        }
        if emulator.refresh_in is not None:
            body["refresh_in"] = emulator.refresh_in
        return body

    def _identity(self, selectors: Mapping[str, str], error: ErrorFactory) -> EmulatedIdentity:
        """The identity the request's selector names (none: system-assigned)."""
        if len(selectors) > 1:
            raise error("Only one of client_id, object_id or resource ID may be specified.")
        served_as = _served_as.get()
        if served_as is not None:
            return served_as
        system = self._emulator.system_identity
        if not selectors:
            if system is None:
                raise error("Identity not found")
            return system
        ((kind, value),) = selectors.items()
        for identity in self._emulator.user_identities:
            if getattr(identity, kind).lower() == value.lower():
                return identity
        raise error("Identity not found")

    def _resource_and_identity(
        self, request: web.Request, names: Mapping[str, str], error: ErrorFactory
    ) -> tuple[str, EmulatedIdentity]:
        resource = _require_resource(request.query.get("resource"), error)
        return resource, self._identity(_selectors(request, names), error)

    # -- the endpoints --------------------------------------------------------------------------

    async def imds(self, request: web.Request, record: RecordedRequest) -> dict[str, Any]:
        if "X-Forwarded-For" in request.headers:  # IMDS answers no request a proxy forwarded
            raise invalid_request(
                "Bad request: the request has an X-Forwarded-For header. IMDS does not answer "
                "requests forwarded by a proxy."
            )
        _require_metadata(request)
        _require_api_version(request, IMDS_API_VERSION, invalid_request)
        resource, identity = self._resource_and_identity(request, _IMDS_SELECTORS, invalid_request)
        body = self.token(resource, identity)
        body["client_id"] = identity.client_id
        return body

    async def app_service(self, request: web.Request, record: RecordedRequest) -> dict[str, Any]:
        if request.headers.get("X-IDENTITY-HEADER") != self._emulator.secret:
            message = "Unauthorized: X-IDENTITY-HEADER is missing or invalid."
            raise Reject(401, {"statusCode": 401, "message": message})

        error = app_service_error
        _require_api_version(request, APP_SERVICE_API_VERSION, error)
        resource = _require_resource(request.query.get("resource"), error)
        identity = self._identity(
            _selectors(request, _APP_SERVICE_SELECTORS),
            lambda d: error(f"Unable to load the proper Managed Identity. {d}"),
        )
        token = self.token(resource, identity)
        body = _bearer(token["access_token"], token["expires_on"], resource)
        body["client_id"] = identity.client_id
        return body

    async def azure_arc(self, request: web.Request, record: RecordedRequest) -> dict[str, Any]:
        _require_metadata(request)
        _require_api_version(request, AZURE_ARC_API_VERSION, invalid_request)
        authorization = request.headers.get("Authorization")
        if authorization is None:
            raise self._arc_challenge()
        scheme, _, key = authorization.partition(" ")
        if scheme != "Basic" or key not in self.arc_keys:
            raise Reject(401, {"error": "unauthorized", "error_description": "Invalid key"})
        resource = _require_resource(request.query.get("resource"), invalid_request)
        selectors = _selectors(request, _AZURE_ARC_SELECTORS)
        if not self._emulator.arc_echo_identity:
            selectors = {}
        identity = self._identity(selectors, invalid_request)
        body = self.token(resource, identity)
        body["client_id"] = identity.client_id
        if selectors:
            body["object_id"] = identity.object_id
            body["msi_res_id"] = identity.resource_id
        return body

    def _arc_challenge(self) -> Reject:
        """Write a fresh key file (readable by its owner only) and challenge for its content."""
        path = os.path.join(self._emulator.arc_key_dir, f"{uuid.uuid4()}.key")
        key = secrets.token_urlsafe(32)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(key)
        self.arc_keys[key] = path
        history = self._emulator.history
        while history is not None and len(self.arc_keys) > history:  # the oldest key goes
            old_key = next(iter(self.arc_keys))
            with contextlib.suppress(OSError):
                os.remove(self.arc_keys.pop(old_key))
        return Reject(
            401,
            {"error": "unauthorized", "error_description": "Key required"},
            {"WWW-Authenticate": f"Basic realm={path}"},
        )

    async def azure_ml(self, request: web.Request, record: RecordedRequest) -> dict[str, Any]:
        if request.headers.get("secret") != self._emulator.secret:
            raise Reject(401, {"error": "unauthorized", "error_description": "Invalid secret"})
        _require_api_version(request, AZURE_ML_API_VERSION, invalid_request)
        resource, identity = self._resource_and_identity(
            request, _AZURE_ML_SELECTORS, invalid_request
        )
        token = self.token(resource, identity)
        expires_on: str = token["expires_on"]
        if self._emulator.expires_on_format == "date":
            moment = datetime.fromtimestamp(int(expires_on), tz=timezone.utc)
            expires_on = moment.strftime("%m/%d/%Y %H:%M:%S +00:00")
        return _bearer(token["access_token"], expires_on, resource)

    async def cloud_shell(self, request: web.Request, record: RecordedRequest) -> dict[str, Any]:
        _require_metadata(request)
        resource = _require_resource(record.form_field("resource"), invalid_request)
        system = _served_as.get() or self._emulator.system_identity
        if system is None:
            raise invalid_request("Identity not found")
        token = self.token(resource, system)
        token.pop("ext_expires_in")
        return token

    async def service_fabric(
        self, request: web.Request, record: RecordedRequest
    ) -> dict[str, Any]:
        error = service_fabric_error
        if request.headers.get("Secret") != self._emulator.secret:
            raise error("SecretHeaderNotFound", "Secret is not found in the request headers.", 401)
        _require_api_version(
            request, SERVICE_FABRIC_API_VERSION, lambda d: error("InvalidApiVersion", d)
        )
        resource = _require_resource(
            request.query.get("resource"), lambda d: error("ArgumentNullOrEmpty", d)
        )
        system = _served_as.get() or self._emulator.system_identity
        if system is None:
            raise error("ManagedIdentityNotFound", "Managed identity not found.", 404)
        token = self.token(resource, system)
        return {
            "token_type": "Bearer",
            "access_token": token["access_token"],
            "expires_on": int(token["expires_on"]),
            "resource": resource,
        }

    async def entra(self, request: web.Request, record: RecordedRequest) -> dict[str, Any]:
        """Microsoft Entra ID's token endpoint: a client credentials grant with the federated
        token as the client assertion (workload identity)."""

        error = entra_error
        emulator = self._emulator
        tenant = request.match_info["tenant"]
        if tenant != emulator.tenant_id:
            raise error("invalid_tenant", f"AADSTS90002: Tenant '{tenant}' not found.")
        if record.form_field("grant_type") != "client_credentials":
            raise error("unsupported_grant_type", "AADSTS70003: grant_type is not supported.")
        if record.form_field("client_assertion_type") != CLIENT_ASSERTION_TYPE:
            raise error("invalid_request", "AADSTS50027: Invalid client_assertion_type.")
        client_id = record.form_field("client_id")
        if client_id != emulator.workload_client_id:
            raise error(
                "unauthorized_client",
                f"AADSTS700016: Application with identifier '{client_id}' was not found.",
            )
        now = emulator.clock()
        try:
            claims = _crypto.verify(
                record.form_field("client_assertion") or "", audience=FEDERATED_AUDIENCE, now=now
            )
        except (jwt.ExpiredSignatureError, jwt.ImmatureSignatureError):
            raise error(
                "invalid_client",
                "AADSTS700024: Client assertion is not within its valid time range. Current "
                f"time: {datetime.fromtimestamp(now, tz=timezone.utc).isoformat()}.",
                401,
            ) from None
        except Exception as exc:
            raise error(
                "invalid_client",
                f"AADSTS50027: JWT token is invalid or malformed ({type(exc).__name__}).",
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
        identity = _served_as.get() or EmulatedIdentity(
            client_id, str(uuid.uuid5(uuid.NAMESPACE_URL, client_id)), ""
        )
        body: dict[str, Any] = {
            "token_type": "Bearer",
            "expires_in": emulator.token_lifetime,
            "ext_expires_in": emulator.token_lifetime,
            "access_token": _crypto.mint(self.claims(resource, identity, app=True)),
        }
        if emulator.refresh_in is not None:
            body["refresh_in"] = emulator.refresh_in
        return body
