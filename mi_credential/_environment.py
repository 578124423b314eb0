"""Which hosting source to use, decided from an environment mapping. Pure: the mapping is passed in.

Detection order (a variable counts as set when present and non-empty):

1. ``IDENTITY_ENDPOINT`` + ``IDENTITY_HEADER`` + ``IDENTITY_SERVER_THUMBPRINT``: Service Fabric
2. ``IDENTITY_ENDPOINT`` + ``IDENTITY_HEADER``: App Service, Functions, Container Apps
3. ``IDENTITY_ENDPOINT`` + ``IMDS_ENDPOINT``: Azure Arc
   (``IDENTITY_ENDPOINT`` alone: nothing; every token request then fails as unavailable)
4. ``MSI_ENDPOINT`` + ``MSI_SECRET``: Azure ML
5. ``MSI_ENDPOINT``: Cloud Shell
6. ``AZURE_AUTHORITY_HOST`` + ``AZURE_TENANT_ID`` + ``AZURE_FEDERATED_TOKEN_FILE``: AKS workload
   identity (unless excluded)
7. otherwise IMDS, at ``AZURE_POD_IDENTITY_AUTHORITY_HOST`` if set.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple
from urllib.parse import urlsplit

from . import _constants
from ._constants import IMDS_DEFAULT_AUTHORITY, IMDS_TOKEN_PATH
from ._constants import EnvironmentVariables as Env
from ._models import Identity, IdentityKind, ManagedIdentitySource

_IDENTITY_KEYS = ("client_id", "object_id", "resource_id")


class SourceConfig(NamedTuple):
    """A detected source and what it needs from the environment.

    Attributes:
        source: The hosting source.
        endpoint: The token endpoint URL (for workload identity: the authority host).
        reason: Why this source was chosen, for diagnostics.
        secret: The endpoint secret (``IDENTITY_HEADER`` or ``MSI_SECRET``); never shown.
        thumbprint: Service Fabric's server certificate thumbprint, normalised.
        tenant_id: Workload identity's tenant.
        client_id: Workload identity's client id from ``AZURE_CLIENT_ID``.
        token_file: Workload identity's federated token file.
        key_directory: Azure Arc's key directory: a challenge's key file is read only from
            here (``None``: Azure Arc is not supported on this platform).
    """

    source: ManagedIdentitySource
    endpoint: str
    reason: str
    secret: str | None = None
    thumbprint: str | None = None
    tenant_id: str | None = None
    client_id: str | None = None
    token_file: str | None = None
    key_directory: str | None = None

    def __repr__(self) -> str:
        secret = ", secret='****'" if self.secret else ""
        return (
            f"SourceConfig(source={self.source.value!r}, endpoint={self.endpoint!r}{secret}, "
            f"thumbprint={self.thumbprint!r}, tenant_id={self.tenant_id!r}, "
            f"client_id={self.client_id!r}, token_file={self.token_file!r})"
        )


def detect_source(
    environ: Mapping[str, str],
    *,
    exclude_workload_identity: bool = False,
    arc_key_directory: str | None = None,
) -> SourceConfig | None:
    """Pick the hosting source from environment variables.

    Args:
        environ: The environment (``os.environ`` or any mapping).
        exclude_workload_identity: Skip rule 6 even if its variables are set.
        arc_key_directory: Azure Arc's key directory (default: the platform's,
            :data:`mi_credential._constants.ARC_KEY_DIRECTORY`). Never read from the
            environment, so a hostile environment cannot widen it.

    Returns:
        The source configuration, or ``None`` when ``IDENTITY_ENDPOINT`` is set without
        ``IDENTITY_HEADER`` or ``IMDS_ENDPOINT`` (no source can be determined).

    Raises:
        ValueError: A variable of the selected source is malformed (not an http(s) URL, has
            control characters, a thumbprint that is not SHA-1, ...).
    """

    def get(name: str) -> str | None:
        value = environ.get(name)
        return value if value else None

    identity_endpoint = get(Env.IDENTITY_ENDPOINT)
    identity_header = get(Env.IDENTITY_HEADER)
    if identity_endpoint:
        thumbprint = get(Env.IDENTITY_SERVER_THUMBPRINT)
        if identity_header and thumbprint:
            endpoint = _url(Env.IDENTITY_ENDPOINT, identity_endpoint, https_only=True)
            return SourceConfig(
                ManagedIdentitySource.SERVICE_FABRIC,
                endpoint,
                "IDENTITY_ENDPOINT, IDENTITY_HEADER and IDENTITY_SERVER_THUMBPRINT are set",
                secret=_header_value(Env.IDENTITY_HEADER, identity_header),
                thumbprint=normalize_thumbprint(thumbprint),
            )
        if identity_header:
            return SourceConfig(
                ManagedIdentitySource.APP_SERVICE,
                _url(Env.IDENTITY_ENDPOINT, identity_endpoint),
                "IDENTITY_ENDPOINT and IDENTITY_HEADER are set",
                secret=_header_value(Env.IDENTITY_HEADER, identity_header),
            )
        if get(Env.IMDS_ENDPOINT):
            return SourceConfig(
                ManagedIdentitySource.AZURE_ARC,
                _url(Env.IDENTITY_ENDPOINT, identity_endpoint),
                "IDENTITY_ENDPOINT and IMDS_ENDPOINT are set",
                key_directory=arc_key_directory or _constants.ARC_KEY_DIRECTORY,
            )
        return None

    msi_endpoint = get(Env.MSI_ENDPOINT)
    if msi_endpoint:
        msi_secret = get(Env.MSI_SECRET)
        if msi_secret:
            return SourceConfig(
                ManagedIdentitySource.AZURE_ML,
                _url(Env.MSI_ENDPOINT, msi_endpoint),
                "MSI_ENDPOINT and MSI_SECRET are set",
                secret=_header_value(Env.MSI_SECRET, msi_secret),
            )
        return SourceConfig(
            ManagedIdentitySource.CLOUD_SHELL,
            _url(Env.MSI_ENDPOINT, msi_endpoint),
            "MSI_ENDPOINT is set (without MSI_SECRET)",
        )

    authority = get(Env.AZURE_AUTHORITY_HOST)
    tenant_id = get(Env.AZURE_TENANT_ID)
    token_file = get(Env.AZURE_FEDERATED_TOKEN_FILE)
    if authority and tenant_id and token_file and not exclude_workload_identity:
        return SourceConfig(
            ManagedIdentitySource.WORKLOAD_IDENTITY,
            normalize_authority(authority),
            "AZURE_AUTHORITY_HOST, AZURE_TENANT_ID and AZURE_FEDERATED_TOKEN_FILE are set",
            tenant_id=_tenant(tenant_id),
            client_id=get(Env.AZURE_CLIENT_ID),
            token_file=token_file,
        )

    pod_identity = get(Env.AZURE_POD_IDENTITY_AUTHORITY_HOST)
    if pod_identity:
        base = _url(Env.AZURE_POD_IDENTITY_AUTHORITY_HOST, pod_identity.strip().strip("/"))
        return SourceConfig(
            ManagedIdentitySource.IMDS,
            base + IMDS_TOKEN_PATH,
            "no other source's variables are set; AZURE_POD_IDENTITY_AUTHORITY_HOST is set",
        )
    return SourceConfig(
        ManagedIdentitySource.IMDS,
        IMDS_DEFAULT_AUTHORITY + IMDS_TOKEN_PATH,
        "no other source's variables are set",
    )


def normalize_thumbprint(value: str) -> str:
    """Remove spaces, tabs, line breaks and colons; require 40 hex digits; lower-case.

    Raises:
        ValueError: The value is not a SHA-1 thumbprint.
    """
    normalized = "".join(c for c in value if c not in " \t\r\n:")
    if len(normalized) != 40 or any(c not in "0123456789abcdefABCDEF" for c in normalized):
        raise ValueError(
            f"{Env.IDENTITY_SERVER_THUMBPRINT} must be a SHA-1 certificate thumbprint "
            "(40 hexadecimal digits)."
        )
    return normalized.lower()


def normalize_authority(value: str) -> str:
    """``login.microsoftonline.com`` -> ``https://login.microsoftonline.com``; https only.

    Raises:
        ValueError: The authority is not an https URL.
    """
    value = value.strip().rstrip("/")
    if "://" not in value:
        value = "https://" + value
    url = _url(Env.AZURE_AUTHORITY_HOST, value)
    if not url.lower().startswith("https://"):
        raise ValueError(
            f"'{url}' is an invalid authority. The value must be a TLS protected (https) URL."
        )
    return url


def _url(name: str, value: str, *, https_only: bool = False) -> str:
    _check_printable(name, value)
    value = value.strip()
    shown = shown_url(value)
    try:
        parts = urlsplit(value)
        port = parts.port  # raises ValueError for a malformed port
    except ValueError as exc:
        detail = "" if "@" in value else f" ({exc})"  # its text may quote user information
        raise ValueError(f"{name} is not a valid URL{detail}: {shown}.") from None
    del port
    schemes = ("https",) if https_only else ("http", "https")
    if parts.scheme.lower() not in schemes:
        raise ValueError(f"{name} must be an {' or '.join(schemes)} URL, not {shown}.")
    if not parts.hostname:
        raise ValueError(f"{name} must be an absolute URL with a host, not {shown}.")
    if parts.username is not None or parts.password is not None:
        raise ValueError(f"{name} must not contain user information (user:password@): {shown}.")
    if parts.fragment:
        raise ValueError(f"{name} must not contain a fragment (#...): {shown}.")
    return value


#: How much of a malformed URL a message shows.
_SHOWN_URL_LENGTH = 100


def shown_url(value: str) -> str:
    """``value`` quoted for a message, with any user information (``user:password@``) replaced
    by ``****@`` and cut to :data:`_SHOWN_URL_LENGTH` characters.

    Everything before the last ``@`` ahead of the query is taken for user information, even
    past a ``/`` (a password may hold one, and then a URL parser sees no user information).
    """
    scheme, separator, rest = value.partition("://")
    if not separator:
        scheme, rest = "", value
    end = min((i for i in (rest.find(c) for c in "?#") if i >= 0), default=len(rest))
    head = rest[:end]
    if "@" in head:
        head = "****@" + head.rpartition("@")[2]
    text = f"{scheme}{separator}{head}{rest[end:]}"
    if len(text) > _SHOWN_URL_LENGTH:
        text = text[: _SHOWN_URL_LENGTH - 3] + "..."
    return repr(text)


def _header_value(name: str, value: str) -> str:
    _check_printable(name, value)
    if not value.isascii():
        raise ValueError(f"{name} must contain only ASCII characters.")
    return value


def _tenant(value: str) -> str:
    _check_printable(Env.AZURE_TENANT_ID, value)
    if not all(c.isalnum() or c in "-." for c in value):
        raise ValueError(f"{Env.AZURE_TENANT_ID} must be a tenant ID or domain name.")
    return value


def _check_printable(name: str, value: str) -> None:
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise ValueError(f"{name} contains control characters (such as CR or LF).")


def build_identity(client_id: str | None, identity_config: Mapping[str, str] | None) -> Identity:
    """Validate the constructor's identity arguments. The mapping is read, never modified.

    Raises:
        ValueError: Both ways of naming an identity were used, more than one identifier was
            given, or a value is not a non-empty string.
    """
    config = dict(identity_config) if identity_config else {}
    present = sorted(k for k in _IDENTITY_KEYS if k in config)
    if client_id and present:
        raise ValueError(
            "When 'client_id' is provided as a keyword argument, 'identity_config' must not "
            f"contain any of the following keys: {', '.join(_IDENTITY_KEYS)} "
            f"(it contains {', '.join(present)})."
        )
    if len(present) > 1:
        raise ValueError(
            "identity_config must not contain more than one of the following keys: "
            f"{', '.join(_IDENTITY_KEYS)} (it contains {', '.join(present)})."
        )
    for key, value in config.items():
        if not isinstance(key, str) or not isinstance(value, str) or not value:
            raise ValueError(f"identity_config[{key!r}] must be a non-empty string.")
    if client_id is not None and not isinstance(client_id, str):
        raise ValueError("client_id must be a string.")

    extra = tuple((k, v) for k, v in config.items() if k not in _IDENTITY_KEYS)
    if client_id:
        return Identity(IdentityKind.CLIENT_ID, client_id, extra)
    if present:
        key = present[0]
        return Identity(IdentityKind(key), config[key], extra)
    return Identity(extra=extra)
