"""Source detection and identity validation: environ -> source, arguments -> identity."""

from __future__ import annotations

import pytest

from mi_credential import ManagedIdentitySource as S
from mi_credential import detect_source
from mi_credential._environment import build_identity, normalize_authority, normalize_thumbprint
from mi_credential._models import IdentityKind

THUMB = "A" * 40
WI = {
    "AZURE_AUTHORITY_HOST": "login.microsoftonline.com",
    "AZURE_TENANT_ID": "tenant",
    "AZURE_FEDERATED_TOKEN_FILE": "/var/run/token",
}


@pytest.mark.parametrize(
    ("environ", "expected", "endpoint"),
    [
        ({}, S.IMDS, "http://169.254.169.254/metadata/identity/oauth2/token"),
        (
            {"AZURE_POD_IDENTITY_AUTHORITY_HOST": "http://10.0.0.1:2579/"},
            S.IMDS,
            "http://10.0.0.1:2579/metadata/identity/oauth2/token",
        ),
        ({"AZURE_POD_IDENTITY_AUTHORITY_HOST": ""}, S.IMDS, "http://169.254.169.254/metadata/identity/oauth2/token"),
        ({"IMDS_ENDPOINT": "http://localhost:40342"}, S.IMDS, None),
        ({"IDENTITY_HEADER": "h", "IDENTITY_SERVER_THUMBPRINT": THUMB}, S.IMDS, None),
        (
            {"IDENTITY_ENDPOINT": "https://sf:2377/token", "IDENTITY_HEADER": "h",
             "IDENTITY_SERVER_THUMBPRINT": THUMB},
            S.SERVICE_FABRIC,
            "https://sf:2377/token",
        ),
        ({"IDENTITY_ENDPOINT": "http://a/msi", "IDENTITY_HEADER": "h"}, S.APP_SERVICE, "http://a/msi"),
        (
            {"IDENTITY_ENDPOINT": "http://a/msi", "IDENTITY_HEADER": "h", "MSI_ENDPOINT": "http://m",
             "MSI_SECRET": "s", **WI},
            S.APP_SERVICE,
            None,
        ),
        (
            {"IDENTITY_ENDPOINT": "http://localhost:40342/metadata/identity/oauth2/token",
             "IMDS_ENDPOINT": "http://localhost:40342"},
            S.AZURE_ARC,
            "http://localhost:40342/metadata/identity/oauth2/token",
        ),
        ({"MSI_ENDPOINT": "http://ml/token", "MSI_SECRET": "s"}, S.AZURE_ML, "http://ml/token"),
        ({"MSI_ENDPOINT": "http://localhost:50342/oauth2/token"}, S.CLOUD_SHELL, None),
        ({"MSI_ENDPOINT": "http://cs", "MSI_SECRET": ""}, S.CLOUD_SHELL, None),
        ({**WI}, S.WORKLOAD_IDENTITY, "https://login.microsoftonline.com"),
        ({**WI, "MSI_ENDPOINT": "http://cs"}, S.CLOUD_SHELL, None),
        ({k: v for k, v in WI.items() if k != "AZURE_TENANT_ID"}, S.IMDS, None),
    ],
)
def test_detection_order(environ: dict[str, str], expected: S, endpoint: str | None) -> None:
    config = detect_source(environ)
    assert config is not None
    assert config.source is expected
    if endpoint is not None:
        assert config.endpoint == endpoint
    assert config.reason


def test_identity_endpoint_alone_selects_nothing() -> None:
    assert detect_source({"IDENTITY_ENDPOINT": "http://x/token"}) is None
    assert detect_source({"IDENTITY_ENDPOINT": "http://x/token", **WI, "MSI_ENDPOINT": "http://m"}) is None


def test_workload_identity_can_be_excluded() -> None:
    config = detect_source(WI, exclude_workload_identity=True)
    assert config is not None and config.source is S.IMDS


def test_secret_is_not_in_repr() -> None:
    config = detect_source({"IDENTITY_ENDPOINT": "http://a/msi", "IDENTITY_HEADER": "hush-canary"})
    assert config is not None
    assert config.secret == "hush-canary"
    assert "hush-canary" not in repr(config)


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"IDENTITY_ENDPOINT": "ftp://a/msi", "IDENTITY_HEADER": "h"}, "http or https URL"),
        ({"IDENTITY_ENDPOINT": "http://user:pw@a/msi", "IDENTITY_HEADER": "h"}, "user information"),
        ({"IDENTITY_ENDPOINT": "/relative", "IDENTITY_HEADER": "h"}, "http or https URL"),
        ({"IDENTITY_ENDPOINT": "http://a/msi#frag", "IDENTITY_HEADER": "h"}, "fragment"),
        ({"IDENTITY_ENDPOINT": "http://a:99999/msi", "IDENTITY_HEADER": "h"}, "not a valid URL"),
        ({"IDENTITY_ENDPOINT": "http://a/msi", "IDENTITY_HEADER": "h\r\nX-Evil: 1"}, "control characters"),
        ({"IDENTITY_ENDPOINT": "http://a/msi\n", "IDENTITY_HEADER": "h"}, "control characters"),
        ({"IDENTITY_ENDPOINT": "http://a/msi", "IDENTITY_HEADER": "héader"}, "ASCII"),
        (
            {"IDENTITY_ENDPOINT": "http://sf/token", "IDENTITY_HEADER": "h", "IDENTITY_SERVER_THUMBPRINT": THUMB},
            "https URL",
        ),
        (
            {"IDENTITY_ENDPOINT": "https://sf/token", "IDENTITY_HEADER": "h", "IDENTITY_SERVER_THUMBPRINT": "zz"},
            "SHA-1 certificate thumbprint",
        ),
        ({**WI, "AZURE_AUTHORITY_HOST": "http://login.example"}, r"TLS protected \(https\)"),
        ({**WI, "AZURE_TENANT_ID": "ten/../ant"}, "tenant ID"),
        ({"AZURE_POD_IDENTITY_AUTHORITY_HOST": "gopher://x"}, "http or https URL"),
    ],
)
def test_malformed_environment_is_a_value_error(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        detect_source(environ)


def test_thumbprint_normalisation() -> None:
    assert normalize_thumbprint("AB:CD " * 10 + "\n") == "abcd" * 10


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("login.microsoftonline.com", "https://login.microsoftonline.com"),
        (" https://login.microsoftonline.us/ ", "https://login.microsoftonline.us"),
    ],
)
def test_authority_normalisation(value: str, expected: str) -> None:
    assert normalize_authority(value) == expected


@pytest.mark.parametrize(
    ("client_id", "config", "kind", "value", "extra"),
    [
        (None, None, IdentityKind.SYSTEM_ASSIGNED, None, ()),
        ("", {}, IdentityKind.SYSTEM_ASSIGNED, None, ()),
        ("cid", None, IdentityKind.CLIENT_ID, "cid", ()),
        (None, {"client_id": "cid"}, IdentityKind.CLIENT_ID, "cid", ()),
        (None, {"object_id": "oid"}, IdentityKind.OBJECT_ID, "oid", ()),
        (None, {"resource_id": "/sub/rid"}, IdentityKind.RESOURCE_ID, "/sub/rid", ()),
        (None, {"mi_res_id": "/sub/rid"}, IdentityKind.SYSTEM_ASSIGNED, None, (("mi_res_id", "/sub/rid"),)),
        ("cid", {"principal_id": "p"}, IdentityKind.CLIENT_ID, "cid", (("principal_id", "p"),)),
    ],
)
def test_identity(client_id, config, kind, value, extra) -> None:
    identity = build_identity(client_id, config)
    assert (identity.kind, identity.value, identity.extra) == (kind, value, extra)


@pytest.mark.parametrize(
    ("client_id", "config", "message"),
    [
        ("cid", {"object_id": "o"}, "must not contain any of the following keys"),
        (None, {"object_id": "o", "resource_id": "r"}, "more than one"),
        (None, {"object_id": ""}, "non-empty string"),
        (None, {"object_id": 5}, "non-empty string"),
        (5, None, "client_id must be a string"),
    ],
)
def test_bad_identity_arguments(client_id, config, message) -> None:
    with pytest.raises(ValueError, match=message):
        build_identity(client_id, config)


def test_identity_config_is_never_modified() -> None:
    config = {"mi_res_id": "/sub/rid"}
    build_identity("cid", config)
    assert config == {"mi_res_id": "/sub/rid"}
