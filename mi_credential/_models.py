"""Plain values passed between the layers: requests, responses, tokens, identities.

All immutable, all free of I/O. A :class:`TokenRequest` knows which of its header values are
secret, so every layer that logs, traces or raises can leave them out. They are NamedTuples
rather than frozen dataclasses: as cheap to create, and several times cheaper to define, which
matters for the package's import time.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from types import MappingProxyType
from typing import NamedTuple

from azure.core.credentials import AccessToken, AccessTokenInfo


class ManagedIdentitySource(str, enum.Enum):
    """The hosting environment a credential gets its tokens from."""

    IMDS = "imds"
    """Azure VMs and scale sets, AKS nodes, AAD Pod Identity (Instance Metadata Service)."""
    APP_SERVICE = "app_service"
    """App Service, Azure Functions, Container Apps, Azure Automation."""
    AZURE_ARC = "azure_arc"
    """Azure Arc-enabled servers (the HIMDS agent)."""
    SERVICE_FABRIC = "service_fabric"
    """Service Fabric applications."""
    AZURE_ML = "azure_ml"
    """Azure Machine Learning compute (also App Service's 2017 protocol)."""
    CLOUD_SHELL = "cloud_shell"
    """Azure Cloud Shell."""
    WORKLOAD_IDENTITY = "workload_identity"
    """AKS workload identity: a federated service account token exchanged at Microsoft Entra ID."""

    @property
    def label(self) -> str:
        """Human-readable name, as used in messages."""
        return _LABELS[self]


_LABELS = {
    ManagedIdentitySource.IMDS: "IMDS",
    ManagedIdentitySource.APP_SERVICE: "App Service",
    ManagedIdentitySource.AZURE_ARC: "Azure Arc",
    ManagedIdentitySource.SERVICE_FABRIC: "Service Fabric",
    ManagedIdentitySource.AZURE_ML: "Azure ML",
    ManagedIdentitySource.CLOUD_SHELL: "Cloud Shell",
    ManagedIdentitySource.WORKLOAD_IDENTITY: "workload identity",
}


class IdentityKind(str, enum.Enum):
    """How the requested identity is named."""

    SYSTEM_ASSIGNED = "system_assigned"
    CLIENT_ID = "client_id"
    OBJECT_ID = "object_id"
    RESOURCE_ID = "resource_id"


class Identity(NamedTuple):
    """The identity a credential asks for: system-assigned, or one user-assigned identity.

    ``extra`` holds any other ``identity_config`` entries (such as ``mi_res_id``), sent verbatim.
    """

    kind: IdentityKind = IdentityKind.SYSTEM_ASSIGNED
    value: str | None = None
    extra: tuple[tuple[str, str], ...] = ()

    @property
    def is_user_assigned(self) -> bool:
        return self.kind is not IdentityKind.SYSTEM_ASSIGNED or bool(self.extra)

    def describe(self) -> str:
        """A short description for messages; identifiers are not secrets."""
        if self.kind is IdentityKind.SYSTEM_ASSIGNED:
            if self.extra:
                return "user-assigned identity " + ", ".join(f"{k}={v}" for k, v in self.extra)
            return "system-assigned identity"
        return f"user-assigned identity {self.kind.value}={self.value}"


class TokenRequest(NamedTuple):
    """One HTTP request to a token endpoint, fully built.

    ``url`` includes the percent-encoded query. ``secret_headers`` names (lower case) the headers
    whose values must never be logged, traced or put in a message; ``secrets`` lists any other
    secret strings the request carries (form fields such as a client assertion).
    """

    method: str
    url: str
    headers: tuple[tuple[str, str], ...] = ()
    form: tuple[tuple[str, str], ...] | None = None
    secret_headers: frozenset[str] = frozenset()
    secret_form_fields: frozenset[str] = frozenset()
    tls_thumbprint: str | None = None
    """SHA-1 thumbprint (40 lower-case hex digits) the server certificate must match, if pinned."""

    def with_header(self, name: str, value: str, *, secret: bool = False) -> TokenRequest:
        """Return a copy with ``name`` set to ``value`` (replacing any previous value)."""
        request = self.with_headers((name, value))
        if secret:
            request = request._replace(secret_headers=self.secret_headers | {name.lower()})
        return request

    def with_headers(self, *headers: tuple[str, str]) -> TokenRequest:
        """Return a copy with these (non-secret) headers set, replacing previous values."""
        names = {name.lower() for name, _ in headers}
        kept = tuple((k, v) for k, v in self.headers if k.lower() not in names)
        return self._replace(headers=kept + headers)

    def __repr__(self) -> str:
        headers = tuple(
            (k, "****" if k.lower() in self.secret_headers else v) for k, v in self.headers
        )
        form = (
            None
            if self.form is None
            else tuple((k, "****" if k in self.secret_form_fields else v) for k, v in self.form)
        )
        return (
            f"TokenRequest(method={self.method!r}, url={self.url!r}, headers={headers!r}, "
            f"form={form!r})"
        )

    @property
    def secrets(self) -> tuple[str, ...]:
        """Every secret value this request carries."""
        values = []
        for name, value in self.headers:
            if name.lower() in self.secret_headers and value:
                values.append(value)
                scheme, _, credentials = value.partition(" ")
                if credentials and scheme.isalpha():  # "Basic <key>": the key alone too
                    values.append(credentials)
        if self.form:
            values.extend(v for k, v in self.form if k in self.secret_form_fields and v)
        return tuple(values)


_NO_HEADERS: Mapping[str, str] = MappingProxyType({})


class RawResponse(NamedTuple):
    """What came back: status, headers (looked up by lower-case name; the transport passes
    aiohttp's case-insensitive mapping), and the body bytes."""

    status: int
    reason: str = ""
    headers: Mapping[str, str] = _NO_HEADERS
    body: bytes = b""
    truncated: bool = False
    """The body exceeded the size limit and was not read."""

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


class LocalFile(str, enum.Enum):
    """The local files a token flow may ask to read; their contents are secrets."""

    ARC_KEY = "arc_key"
    """The key file an Azure Arc challenge names, read only from the agent's key directory."""
    FEDERATED_TOKEN = "federated_token"
    """Workload identity's federated service account token (the kubelet rotates it)."""


class FileRead(NamedTuple):
    """A token flow's step: read a local file and send its text back into the flow."""

    kind: LocalFile
    path: str
    directory: str | None = None
    """Azure Arc: the directory the file must lie directly in."""
    fresh: bool = False
    """Workload identity: read the file even if it looks unchanged since it was last read."""


class ParsedToken(NamedTuple):
    """A token parsed from a successful response, with times in epoch seconds."""

    token: str
    expires_on: int
    refresh_on: int
    token_type: str = "Bearer"


class RedactedAccessToken(AccessToken):
    """:class:`azure.core.credentials.AccessToken` whose ``repr`` does not show the token."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"AccessToken(token='****', expires_on={self.expires_on})"


class RedactedAccessTokenInfo(AccessTokenInfo):
    """:class:`azure.core.credentials.AccessTokenInfo` whose ``repr`` does not show the token."""

    def __repr__(self) -> str:
        return (
            f"AccessTokenInfo(token='****', expires_on={self.expires_on}, "
            f"token_type='{self.token_type}', refresh_on={self.refresh_on})"
        )
