"""Hostile input: crafted Azure Arc challenges, an impostor Service Fabric server, control and
non-ASCII characters in the environment and identity parameters, odd URLs and scopes. Each gets a
clear error, and nothing is sent where it should not be."""

from __future__ import annotations

import datetime
import os
import ssl
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from mi_credential import (
    CredentialUnavailableError,
    ManagedIdentityCredential,
    ManagedIdentityError,
)
from mi_credential import ManagedIdentitySource as S
from mi_credential.emulator import Emulator, Fault

from ..conftest import FakeClock

pytestmark = pytest.mark.reliability

SCOPE = "https://storage.azure.com/.default"


def arc_challenge(path: str) -> Fault:
    return Fault(source="azure_arc", status=401, headers={"WWW-Authenticate": f"Basic realm={path}"},
                 body={"error": "unauthorized"}, times=None)


def write(path: str, data: bytes) -> str:
    with open(path, "wb") as handle:
        handle.write(data)
    return path


@pytest.fixture
def outside(tmp_path) -> str:
    directory = tmp_path / "outside"
    directory.mkdir()
    return str(directory)


ARC_CASES = {
    "outside the key directory": lambda keys, out: write(os.path.join(out, "a.key"), b"stolen"),
    "through ..": lambda keys, out: write(os.path.join(keys, "..", "b.key"), b"stolen"),
    "through a symlinked file": lambda keys, out: _symlink(
        write(os.path.join(out, "c.key"), b"stolen"), os.path.join(keys, "c.key")),
    "through a symlinked directory": lambda keys, out: os.path.join(
        _symlink(out, os.path.join(keys, "sub")), "d.key") if write(
        os.path.join(out, "d.key"), b"stolen") else "",
    "oversized": lambda keys, out: write(os.path.join(keys, "e.key"), b"k" * 4097),
    "wrong extension": lambda keys, out: write(os.path.join(keys, "f.txt"), b"stolen"),
    "a FIFO (would block a reader)": lambda keys, out: _fifo(os.path.join(keys, "g.key")),
    "missing": lambda keys, out: os.path.join(keys, "missing.key"),
    "relative": lambda keys, out: "tokens/h.key",
    "not text": lambda keys, out: write(os.path.join(keys, "i.key"), b"\xff\xfe\x00bin"),
    "with a line break": lambda keys, out: write(os.path.join(keys, "j.key"), b"key\r\nX-Evil: 1"),
}


def _symlink(target: str, link: str) -> str:
    os.symlink(target, link)
    return link


def _fifo(path: str) -> str:
    os.mkfifo(path)
    return path


@pytest.mark.parametrize("case", list(ARC_CASES))
async def test_arc_key_file_that_must_not_be_read(
    emulator: Emulator, clock: FakeClock, outside: str, case: str
) -> None:
    path = ARC_CASES[case](emulator.arc_key_dir, outside)
    emulator.add_fault(arc_challenge(path))
    async with ManagedIdentityCredential(
        **emulator.client_options(S.AZURE_ARC), clock=clock, sleep=clock.sleep
    ) as credential:
        with pytest.raises(ManagedIdentityError, match="Azure Arc challenge refused") as caught:
            await credential.get_token(SCOPE)
    assert "stolen" not in str(caught.value)
    assert len(emulator.requests) == 1  # the challenge was not answered: nothing else was sent
    assert emulator.requests[0].header("authorization") is None


@pytest.mark.parametrize(
    "header",
    ["", "Bearer realm=/x.key", "Basic /var/opt/azcmagent/tokens/x.key", "Basic realm=a=b.key"],
)
async def test_malformed_arc_challenges(emulator: Emulator, clock: FakeClock, header: str) -> None:
    emulator.add_fault(Fault(source="azure_arc", status=401, headers={"WWW-Authenticate": header},
                             times=None))
    async with ManagedIdentityCredential(
        **emulator.client_options(S.AZURE_ARC), clock=clock, sleep=clock.sleep
    ) as credential:
        with pytest.raises(ManagedIdentityError, match="WWW-Authenticate"):
            await credential.get_token(SCOPE)
    assert len(emulator.requests) == 1


def impostor_certificate(directory: str) -> tuple[str, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "impostor")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    cert_file = write(os.path.join(directory, "impostor.pem"),
                      certificate.public_bytes(serialization.Encoding.PEM))
    key_file = write(os.path.join(directory, "impostor.key"), key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return cert_file, key_file


@pytest.fixture
async def impostor(tmp_path) -> AsyncIterator[tuple[str, list[web.Request]]]:
    """An HTTPS server on loopback with a certificate of its own, recording what reaches it."""
    received: list[web.Request] = []

    async def handler(request: web.Request) -> web.Response:
        received.append(request)
        return web.json_response({"access_token": "x", "expires_in": 3600})

    app = web.Application()
    app.router.add_get("/metadata/identity/oauth2/token", handler)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*impostor_certificate(str(tmp_path)))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"https://127.0.0.1:{port}", received
    await runner.cleanup()


async def test_service_fabric_impostor_gets_nothing(
    emulator: Emulator, clock: FakeClock, impostor: tuple[str, list[web.Request]]
) -> None:
    url, received = impostor
    environ = {**emulator.environ(S.SERVICE_FABRIC),
               "IDENTITY_ENDPOINT": url + "/metadata/identity/oauth2/token"}
    async with ManagedIdentityCredential(environ=environ, clock=clock, sleep=clock.sleep) as credential:
        with pytest.raises(CredentialUnavailableError, match="does not match IDENTITY_SERVER_THUMBPRINT"):
            await credential.get_token(SCOPE)
    assert received == []  # the Secret header never reached the impostor


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"IDENTITY_ENDPOINT": "http://127.0.0.1:1/msi", "IDENTITY_HEADER": "secret\r\nX-Evil: 1"},
         "IDENTITY_HEADER contains control characters"),
        ({"IDENTITY_ENDPOINT": "http://127.0.0.1:1/msi\r\nX-Evil: 1", "IDENTITY_HEADER": "s"},
         "IDENTITY_ENDPOINT contains control characters"),
        ({"IDENTITY_ENDPOINT": "http://127.0.0.1:1/msi", "IDENTITY_HEADER": "sécret"},
         "IDENTITY_HEADER must contain only ASCII"),
        ({"MSI_ENDPOINT": "http://127.0.0.1:1/ml", "MSI_SECRET": "s\x00"},
         "MSI_SECRET contains control characters"),
        ({"IDENTITY_ENDPOINT": "http://user:pass@127.0.0.1:1/msi", "IDENTITY_HEADER": "s"},
         "must not contain user information"),
        ({"IDENTITY_ENDPOINT": "file:///etc/passwd", "IDENTITY_HEADER": "s"},
         "must be an http or https URL"),
        ({"MSI_ENDPOINT": "javascript:alert(1)"}, "must be an http or https URL"),
        ({"AZURE_POD_IDENTITY_AUTHORITY_HOST": "ftp://127.0.0.1"}, "must be an http or https URL"),
        ({"AZURE_AUTHORITY_HOST": "http://login.example", "AZURE_TENANT_ID": "t",
          "AZURE_FEDERATED_TOKEN_FILE": "/f", "AZURE_CLIENT_ID": "c"},
         r"must be a TLS protected \(https\) URL"),
        ({"AZURE_AUTHORITY_HOST": "https://login.example", "AZURE_TENANT_ID": "t/../../x",
          "AZURE_FEDERATED_TOKEN_FILE": "/f", "AZURE_CLIENT_ID": "c"},
         "must be a tenant ID"),
    ],
)
def test_hostile_environment_is_refused_at_construction(
    environ: dict[str, str], message: str
) -> None:
    with pytest.raises(ValueError, match=message) as caught:
        ManagedIdentityCredential(environ=environ)
    for value in environ.values():  # the offending values are named, not echoed
        if "X-Evil" in value or "pass@" in value or "\x00" in value:
            assert value not in str(caught.value)


@pytest.mark.parametrize(
    "client_id", ["abc\r\nX-Evil: 1", "clïent-ïd", "a&resource=https://evil/", "a#b", "../../x"]
)
async def test_identity_parameters_are_sent_encoded_and_inert(
    emulator: Emulator, clock: FakeClock, client_id: str
) -> None:
    async with ManagedIdentityCredential(
        environ=emulator.environ(S.IMDS), client_id=client_id, clock=clock, sleep=clock.sleep
    ) as credential:
        with pytest.raises(CredentialUnavailableError, match="is not assigned"):
            await credential.get_token(SCOPE)
    (request,) = emulator.requests
    assert request.param("client_id") == client_id  # exactly the value, as one parameter
    assert request.param("resource") == "https://storage.azure.com"
    assert [name for name, _ in request.query] == ["api-version", "resource", "client_id"]
    assert request.header("x-evil") is None


@pytest.mark.parametrize(
    ("scopes", "message"),
    [
        ((), "At least one scope"),
        (("",), "non-empty string"),
        (("https://a/.default", "https://b/.default"), "exactly one scope"),
        (("https://a/.default https://b/.default",), "no whitespace"),
        (("not a url",), "no whitespace"),
        (("vault",), "expected a resource URI"),
        (("https://a/\r\n.default",), "control characters"),
        ((None,), "non-empty string"),
    ],
)
async def test_bad_scopes_send_nothing(
    emulator: Emulator, clock: FakeClock, scopes: tuple[object, ...], message: str
) -> None:
    async with ManagedIdentityCredential(
        environ=emulator.environ(S.APP_SERVICE), clock=clock, sleep=clock.sleep
    ) as credential:
        with pytest.raises(ValueError, match=message):
            await credential.get_token(*scopes)  # type: ignore[arg-type]
    assert emulator.requests == []
