"""User mistakes on the command line, run as users run it (a subprocess): each ends with exit
code 2 and one line on standard error naming the problem, never a traceback, and leaves no
emulator files behind.

Each subprocess gets a temporary directory of its own (``TMPDIR``, ``TEMP``, ``TMP``: what its
``tempfile.gettempdir()`` returns), so that "nothing left in the temporary directory" is checked
exactly, whatever other tests running beside these create in the shared one.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from mi_credential._cli._ports import listen_problem
from mi_credential.emulator import Emulator

SCOPE = "https://vault.azure.net/.default"


def run_cli(
    tmp: Path, *args: str, environ: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    # No managed identity variable of the machine (conftest.clean_environ), and IMDS on
    # loopback (conftest.children_off_the_network).
    env = {**os.environ, "TMPDIR": str(tmp), "TEMP": str(tmp), "TMP": str(tmp), **(environ or {})}
    return subprocess.run(
        [sys.executable, "-m", "mi_credential", *args],
        capture_output=True, text=True, timeout=120, env=env, check=False,
    )


def assert_usage_error(
    result: subprocess.CompletedProcess[str], tmp: Path, *expected: str, prog: bool = True
) -> str:
    """Exit code 2, nothing on standard output, one line on standard error holding each of
    ``expected`` (and starting ``mi-credential COMMAND: error:`` if ``prog``), no traceback,
    and an empty temporary directory. Returns the line."""
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    assert result.stderr.endswith("\n") and result.stderr.count("\n") == 1, result.stderr
    line = result.stderr.rstrip("\n")
    assert "error: " in line
    if prog:
        assert line.startswith("mi-credential") and ": error: " in line, line
    for text in expected:
        assert text in line
    assert os.listdir(tmp) == [], "files left in the temporary directory"
    return line


@pytest.fixture
def tmp(tmp_path: Path) -> Path:
    """The subprocess's temporary directory."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    return folder


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A loopback port another program listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port: int = sock.getsockname()[1]
        yield port


USAGE_ERRORS = {
    # token
    "a host name for a scope": (
        ("token", "--scope", "management.azure.com"),
        ("argument --scope: not a scope", "did you mean https://management.azure.com/.default?"),
    ),
    "two scopes": (
        ("token", "--scope", SCOPE, "--scope", "https://storage.azure.com/.default"),
        ("--scope was given more than once: one scope per request",),
    ),
    "two scopes in one value": (
        ("token", "--scope", f"{SCOPE} https://storage.azure.com/.default"),
        ("one scope per request, not several",),
    ),
    "an empty scope": (("token", "--scope", ""), ("argument --scope: must not be empty",)),
    "no scope": (("token",), ("the following arguments are required: --scope",)),
    "an empty client ID": (
        ("token", "--scope", SCOPE, "--client-id", ""),
        ("argument --client-id: must not be empty", "system-assigned"),
    ),
    "an empty object ID": (
        ("token", "--scope", SCOPE, "--object-id", " "),
        ("argument --object-id: must not be empty",),
    ),
    "an empty resource ID": (
        ("token", "--scope", SCOPE, "--resource-id", ""),
        ("argument --resource-id: must not be empty",),
    ),
    "two client IDs": (
        ("token", "--scope", SCOPE, "--client-id", "a", "--client-id", "b"),
        ("--client-id was given more than once",),
    ),
    "two kinds of identity": (
        ("token", "--scope", SCOPE, "--client-id", "a", "--object-id", "b"),
        ("not allowed with argument --client-id",),
    ),
    "a negative timeout": (
        ("token", "--scope", SCOPE, "--timeout", "-1"),
        ("argument --timeout: must be more than 0", "not -1"),
    ),
    "a timeout that is not a number": (
        ("token", "--scope", SCOPE, "--timeout", "abc"),
        ("argument --timeout: not a number of seconds: 'abc'",),
    ),
    "an infinite timeout": (
        ("token", "--scope", SCOPE, "--timeout", "inf"),
        ("argument --timeout: not a number of seconds",),
    ),
    # doctor
    "doctor: a zero timeout": (("doctor", "--timeout", "0"), ("argument --timeout: must be",)),
    "doctor: a host name for a scope": (
        ("doctor", "--scope", "vault.azure.net"),
        ("did you mean https://vault.azure.net/.default?",),
    ),
    "doctor: an empty client ID": (
        ("doctor", "--client-id", ""),
        ("argument --client-id: must not be empty",),
    ),
    "doctor: two timeouts": (
        ("doctor", "--timeout", "1", "--timeout", "2"),
        ("--timeout was given more than once",),
    ),
    # emulate
    "a port out of range": (
        ("emulate", "--port", "99999"),
        ("argument --port: port must be 0-65535, not 99999",),
    ),
    "an https port out of range": (
        ("emulate", "--https-port", "99999"),
        ("argument --https-port: port must be 0-65535",),
    ),
    "a negative port": (("emulate", "--port", "-1"), ("port must be 0-65535, not -1",)),
    "a port that is not a number": (
        ("emulate", "--port", "http"),
        ("argument --port: not a port number: 'http'",),
    ),
    "the same port twice": (
        ("emulate", "--port", "48123", "--https-port", "48123"),
        ("--port and --https-port must differ",),
    ),
    "two ports": (("emulate", "--port", "1", "--port", "2"), ("--port was given more than once",)),
    "a latency that is not a number": (
        ("emulate", "--latency", "abc"),
        ("argument --latency: not a number of seconds: 'abc'",),
    ),
    "a negative latency": (("emulate", "--latency", "-1"), ("argument --latency: must be 0 to",)),
    "a zero token lifetime": (
        ("emulate", "--token-lifetime", "0"),
        ("argument --token-lifetime: must be 1 to 604800 seconds",),
    ),
    "a fractional token lifetime": (
        ("emulate", "--token-lifetime", "1.5"),
        ("argument --token-lifetime: not a whole number of seconds",),
    ),
    "an unknown source": (
        ("emulate", "--source", "aks"),
        ("argument --source: invalid choice: 'aks'",),
    ),
    "two sources": (
        ("emulate", "--source", "imds", "--source", "app_service"),
        ("--source was given more than once",),
    ),
    "an empty key directory": (
        ("emulate", "--arc-key-dir", ""),
        ("argument --arc-key-dir: must not be empty",),
    ),
    # demo
    "demo: two Prometheus ports": (
        ("demo", "--prometheus-port", "0", "--prometheus-port", "0"),
        ("--prometheus-port was given more than once",),
    ),
    # the command line itself
    "no command": ((), ("the following arguments are required: COMMAND",)),
    "an unknown command": (("tokens",), ("invalid choice: 'tokens'",)),
    "an unknown option, with a line break": (
        ("doctor", "--verbose", "a\nb"),
        ("unrecognized arguments: --verbose a\\nb",),
    ),
}


@pytest.mark.parametrize("case", list(USAGE_ERRORS))
def test_usage_errors_are_one_line_and_exit_code_2(tmp: Path, case: str) -> None:
    args, expected = USAGE_ERRORS[case]
    assert_usage_error(run_cli(tmp, *args), tmp, *expected)


def test_a_key_directory_that_is_a_file(tmp: Path, tmp_path: Path) -> None:
    not_a_directory = tmp_path / "file"
    not_a_directory.write_text("")
    result = run_cli(tmp, "emulate", "--arc-key-dir", str(not_a_directory))
    assert_usage_error(result, tmp, f"--arc-key-dir {str(not_a_directory)!r} is not a directory")


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (("emulate", "--port", "{port}"), "--port"),
        (("emulate", "--https-port", "{port}"), "--https-port"),
        (("emulate", "--port", "0", "--https-port", "{port}"), "--https-port"),
    ],
    ids=["--port", "--https-port", "both"],
)
def test_emulate_on_a_port_in_use_names_it_and_leaves_nothing(
    tmp: Path, busy_port: int, args: tuple[str, ...], option: str
) -> None:
    result = run_cli(tmp, *(arg.format(port=busy_port) for arg in args))
    line = assert_usage_error(result, tmp, f"{option}: port {busy_port} is in use")
    assert "0 for any free port" in line


def test_the_demo_on_a_port_in_use_names_it_and_leaves_nothing(tmp: Path, busy_port: int) -> None:
    """The demo words the message itself, or leaves it to the command line's own handler."""
    pytest.importorskip(
        "opentelemetry.exporter.prometheus",
        reason="the demo extra is not installed (the floors run installs the test extra only)",
    )
    result = run_cli(tmp, "demo", "--prometheus-port", str(busy_port))
    line = assert_usage_error(result, tmp, "--prometheus-port", str(busy_port), prog=False)
    assert "in use" in line.lower()


@pytest.mark.parametrize(
    ("environ", "shown", "hidden"),
    [
        ({"AZURE_POD_IDENTITY_AUTHORITY_HOST": "management.azure.com"},
         "AZURE_POD_IDENTITY_AUTHORITY_HOST must be an http or https URL, not 'management.azure.com'",
         None),
        ({"IDENTITY_ENDPOINT": "localhost:8081/msi/token", "IDENTITY_HEADER": "h"},
         "IDENTITY_ENDPOINT must be an http or https URL, not 'localhost:8081/msi/token'", None),
        ({"MSI_ENDPOINT": "ftp://127.0.0.1/token"}, "not 'ftp://127.0.0.1/token'", None),
        ({"IDENTITY_ENDPOINT": "http://admin:hunter2@127.0.0.1:8081/msi", "IDENTITY_HEADER": "h"},
         "must not contain user information (user:password@): 'http://****@127.0.0.1:8081/msi'",
         "hunter2"),
        ({"IDENTITY_ENDPOINT": "http://admin:hun/ter2@127.0.0.1:8081", "IDENTITY_HEADER": "h"},
         "IDENTITY_ENDPOINT is not a valid URL: 'http://****@127.0.0.1:8081'", "ter2"),
        ({"AZURE_AUTHORITY_HOST": "https://login.example/#x", "AZURE_TENANT_ID": "t",
          "AZURE_FEDERATED_TOKEN_FILE": "/f", "AZURE_CLIENT_ID": "c"},
         "AZURE_AUTHORITY_HOST must not contain a fragment (#...): 'https://login.example/#x'",
         None),
    ],
    ids=["pod identity host", "no scheme", "ftp", "user info", "user info with a slash",
         "fragment"],
)
def test_a_malformed_endpoint_variable_is_shown(
    tmp: Path, environ: dict[str, str], shown: str, hidden: str | None
) -> None:
    result = run_cli(tmp, "token", "--scope", SCOPE, environ=environ)
    line = assert_usage_error(result, tmp, shown)
    if hidden is not None:
        assert hidden not in line


def test_a_long_malformed_value_is_cut_short(tmp: Path) -> None:
    value = "management.azure.com/" + "x" * 500
    result = run_cli(tmp, "token", "--scope", SCOPE, environ={"MSI_ENDPOINT": value})
    line = assert_usage_error(result, tmp, "MSI_ENDPOINT must be an http or https URL, not ")
    assert value not in line and "xxx..." in line and len(line) < 250


def test_a_failed_start_removes_the_emulator_s_files(busy_port: int) -> None:
    emulator = Emulator(https_port=busy_port)
    workdir = os.path.dirname(emulator.ca_file)
    assert os.path.isdir(workdir)
    with pytest.raises(OSError, match=r"(?i)in use") as caught:
        asyncio.run(emulator.start())
    assert caught.value.errno == errno.EADDRINUSE
    assert not os.path.exists(workdir)
    asyncio.run(emulator.close())  # closing again is harmless


def bind_error(code: int, port: int) -> OSError:
    """The error asyncio's ``create_server`` raises when it cannot bind."""
    return OSError(code, f"error while attempting to bind on address ('127.0.0.1', {port}): x")


def test_listen_problems_name_the_option() -> None:
    ports = {"--port": 8080, "--https-port": 8443}
    assert listen_problem(bind_error(errno.EADDRINUSE, 8443), ports) == (
        "--https-port: port 8443 is in use (another program listens on it): choose another, "
        "or 0 for any free port"
    )
    assert listen_problem(bind_error(errno.EACCES, 80), {"--port": 80}) == (
        "--port: this user may not listen on port 80 (ports below 1024 need privileges): "
        "choose another, or 0 for any free port"
    )
    unnamed = listen_problem(OSError(errno.EADDRINUSE, "in use"), ports)
    assert unnamed == "cannot listen on 127.0.0.1 (--port 8080, --https-port 8443): in use"
    # Anything else is not a listening problem: it propagates as it is.
    assert listen_problem(OSError(errno.EACCES, "Permission denied: 'x'"), ports) is None
    assert listen_problem(bind_error(errno.EADDRINUSE, 8080), {}) is None
    assert listen_problem(ValueError("x"), ports) is None
