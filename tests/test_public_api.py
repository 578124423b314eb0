"""The public surface: exports, protocols, drop-in shape, dependency direction."""

from __future__ import annotations

import asyncio
import inspect
import os
import subprocess
import sys
import textwrap

import aiohttp
import pytest
from azure.core.credentials import AccessToken, AccessTokenInfo
from azure.core.credentials_async import AsyncSupportsTokenInfo, AsyncTokenCredential
from azure.core.exceptions import ClientAuthenticationError

import mi_credential
import mi_credential._transport as transport
from mi_credential import ManagedIdentityCredential
from mi_credential import ManagedIdentitySource as S
from mi_credential.emulator import Emulator

from .conftest import CredentialFactory

SCOPE = "https://storage.azure.com/.default"


def test_all_is_complete_and_exact() -> None:
    public = {name for name in vars(mi_credential) if not name.startswith("_")}
    public -= {"annotations"}
    modules = {name for name in public if inspect.ismodule(getattr(mi_credential, name))}
    assert set(mi_credential.__all__) == (public - modules) | {"__version__"}
    for name in mi_credential.__all__:
        assert hasattr(mi_credential, name)


def test_the_public_modules_export_exactly_their_names() -> None:
    from mi_credential import http, telemetry

    for module in (http, telemetry):
        names = {
            name
            for name, value in vars(module).items()
            if not name.startswith("_")
            and name != "annotations"
            and not inspect.ismodule(value)
            and getattr(value, "__module__", module.__name__) == module.__name__
        }
        assert set(module.__all__) == names, module.__name__
    assert telemetry.ACQUISITION_DURATION == "mi_credential.token.acquisition.duration"
    assert telemetry.INSTRUMENTATION_SCOPE == "mi_credential"


def test_importing_the_package_loads_no_opentelemetry_or_aiohttp() -> None:
    code = (
        "import sys, mi_credential; from mi_credential import http, telemetry; "
        "print(' '.join(m for m in sys.modules if m.split('.')[0] in ('opentelemetry', 'aiohttp')))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split() == []


def test_error_tree() -> None:
    for error in (
        mi_credential.ManagedIdentityError,
        mi_credential.CredentialUnavailableError,
        mi_credential.TokenRequestError,
        mi_credential.InvalidTokenResponseError,
        mi_credential.IdentityMismatchError,
    ):
        assert issubclass(error, ClientAuthenticationError)
    assert issubclass(mi_credential.InvalidTokenResponseError, mi_credential.TokenRequestError)
    assert issubclass(mi_credential.IdentityMismatchError, mi_credential.InvalidTokenResponseError)
    assert issubclass(mi_credential.CredentialUnavailableError, mi_credential.ManagedIdentityError)


async def test_satisfies_the_azure_core_protocols(
    emulator: Emulator, make_credential: CredentialFactory
) -> None:
    credential = make_credential(S.IMDS)
    assert isinstance(credential, AsyncTokenCredential)
    assert isinstance(credential, AsyncSupportsTokenInfo)
    token = await credential.get_token(SCOPE)
    assert isinstance(token, AccessToken)
    token_value, expires_on = token  # a real tuple, as azure-core's
    assert (token_value, expires_on) == (token.token, token.expires_on)
    info = await credential.get_token_info(SCOPE)
    assert isinstance(info, AccessTokenInfo)
    assert info.token_type == "Bearer"


def test_constructor_is_drop_in_shaped() -> None:
    parameters = inspect.signature(ManagedIdentityCredential).parameters
    assert parameters["client_id"].kind is inspect.Parameter.KEYWORD_ONLY
    assert parameters["identity_config"].kind is inspect.Parameter.KEYWORD_ONLY
    assert any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())


async def test_azure_identity_pipeline_keywords_are_accepted() -> None:
    credential = ManagedIdentityCredential(
        environ={}, retry_total=2, logging_enable=True, transport=None,
        _exclude_workload_identity_credential=True,
    )
    await credential.close()


def test_unknown_keywords_and_bad_timeouts_are_refused() -> None:
    with pytest.raises(TypeError, match="unexpected keyword arguments: colour"):
        ManagedIdentityCredential(environ={}, colour="blue")
    for name in ("timeout", "connection_timeout", "read_timeout"):
        with pytest.raises(ValueError, match=name):
            ManagedIdentityCredential(environ={}, **{name: 0})


#: A fresh interpreter imports every module of the core, the command line and the emulator
#: included, then prints the packages it loaded that the core must never load: the integrations
#: (and the demo above them), the web frameworks, and what only tests, samples and the demo use.
#: A package's submodule is never loaded without the package, so the packages suffice.
_IMPORT_THE_WHOLE_CORE = textwrap.dedent(
    """
    import importlib, pkgutil, sys
    import mi_credential
    for module in pkgutil.walk_packages(mi_credential.__path__, "mi_credential."):
        importlib.import_module(module.name)
    banned = {"starlette", "fastapi", "uvicorn", "httpx", "msal", "azure.identity",
              "opentelemetry.sdk"}
    print(" ".join(sorted(
        name for name in sys.modules
        if name in banned or (name.startswith("mi_credential_") and "." not in name)
    )))
    """
)


def test_the_core_imports_no_integration_or_web_framework() -> None:
    result = subprocess.run(
        [sys.executable, "-c", _IMPORT_THE_WHOLE_CORE], capture_output=True, text=True, check=True
    )
    assert result.stdout.split() == []


async def test_injected_session_is_used_and_never_closed(
    emulator: Emulator, make_credential: CredentialFactory
) -> None:
    async with aiohttp.ClientSession() as session:
        credential = make_credential(S.APP_SERVICE, session=session)
        await credential.get_token(SCOPE)
        await credential.close()
        assert not session.closed
        async with session.get(emulator.http_url + "/emulator/jwks") as response:
            assert response.status == 200


async def test_credentials_on_a_loop_share_one_session_closed_when_idle(
    emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(transport, "IDLE_CLOSE_SECONDS", 0.05)
    shared = None
    async with (
        ManagedIdentityCredential(environ=emulator.environ(S.IMDS)) as first,
        ManagedIdentityCredential(environ=emulator.environ(S.APP_SERVICE)) as second,
    ):
        await first.get_token(SCOPE)
        shared = transport._loop_sessions[asyncio.get_running_loop()]
        session = shared.session
        assert session is not None and not session.closed
        await second.get_token(SCOPE)
        assert shared.session is session  # one session, one pool of warm connections
        # Idle past the (shortened) idle time: closed. Wait for the idle timer itself.
        assert shared.idle_timer is not None
        loop = asyncio.get_running_loop()
        idle_passed = loop.create_future()
        loop.call_at(shared.idle_timer.when() + 0.001, idle_passed.set_result, None)
        await asyncio.wait_for(idle_passed, 5)
        assert shared.closing is not None
        await shared.closing
        assert session.closed and shared.session is None
        await first.get_token("https://vault.azure.net/.default")  # a new one when needed
        assert shared.session is not None
    assert shared.session is None  # closing a credential with nothing in flight closes it


async def test_credentials_created_alike_share_configuration_not_tokens(
    emulator: Emulator,
) -> None:
    environ = emulator.environ(S.APP_SERVICE)
    async with (
        ManagedIdentityCredential(environ=environ) as first,
        ManagedIdentityCredential(environ=dict(environ)) as second,
        ManagedIdentityCredential(environ=environ, client_id="cid") as other,
    ):
        # Immutable configuration and telemetry are shared, not copied into each credential.
        assert first._source is second._source and first._config is second._config
        assert first._acquirer is not None and second._acquirer is not None
        assert first._acquirer.recorder is second._acquirer.recorder
        assert other._source is not first._source
        assert other._source is not None and other._source.identity.value == "cid"
        # Caches are not shared: each credential asks for its own token.
        await first.get_token(SCOPE)
        await second.get_token(SCOPE)
        assert emulator.issued == 2
    # A malformed environment is refused every time, not remembered as a success.
    bad = {"IDENTITY_ENDPOINT": "ftp://127.0.0.1/msi", "IDENTITY_HEADER": "h"}
    for _ in range(2):
        with pytest.raises(ValueError, match="IDENTITY_ENDPOINT"):
            ManagedIdentityCredential(environ=bad)


async def test_usable_without_async_with(emulator: Emulator) -> None:
    credential = ManagedIdentityCredential(environ=emulator.environ(S.AZURE_ML))
    assert emulator.verify((await credential.get_token(SCOPE)).token)
    await credential.close()


def test_repr_shows_no_secret() -> None:
    credential = ManagedIdentityCredential(
        environ={"IDENTITY_ENDPOINT": "http://127.0.0.1:9/msi", "IDENTITY_HEADER": "canary-hdr"},
        client_id="cid",
    )
    text = repr(credential)
    assert "canary-hdr" not in text
    assert text == (
        "ManagedIdentityCredential(source='app_service', "
        "identity='user-assigned identity client_id=cid')"
    )


async def test_unhashable_scopes_are_value_errors(
    emulator: Emulator, make_credential: CredentialFactory
) -> None:
    credential = make_credential(S.IMDS)
    with pytest.raises(ValueError, match="non-empty string"):
        await credential.get_token(["https://a/.default"])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="non-empty string"):
        await credential.get_token_info(["https://a/.default"])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        (None, "http://127.0.0.1:9"),
        ({"PATH": os.environ.get("PATH", "")}, "http://127.0.0.1:9"),
        ({"AZURE_POD_IDENTITY_AUTHORITY_HOST": "http://127.0.0.1:8"}, "http://127.0.0.1:8"),
    ],
    ids=["inherited", "given", "its own"],
)
def test_processes_tests_start_have_imds_on_loopback(
    env: dict[str, str] | None, expected: str
) -> None:
    code = "import os; print(os.environ.get('AZURE_POD_IDENTITY_AUTHORITY_HOST'))"
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == expected


def test_tests_cannot_reach_non_loopback_addresses(loopback_only: list[str]) -> None:
    import socket

    with socket.socket() as sock, pytest.raises(ConnectionRefusedError, match="loopback only"):
        sock.connect(("169.254.169.254", 80))
    assert loopback_only == ["169.254.169.254"]
    loopback_only.clear()  # expected here; any other test doing this fails
