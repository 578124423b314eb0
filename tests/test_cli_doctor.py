"""``doctor`` and ``token`` against the emulator: the right diagnosis and exit code, bounded."""

from __future__ import annotations

import asyncio
import os
import socket
import sys

import pytest

from mi_credential import CredentialUnavailableError
from mi_credential import ManagedIdentitySource as S
from mi_credential._cli._doctor import Endpoint, describe_timing, diagnose, endpoint_of, explain
from mi_credential._cli._token import decode_claims
from mi_credential._environment import detect_source
from mi_credential.emulator import Emulator, Fault

from .conftest import FakeClock
from .test_availability import black_hole  # noqa: F401  (the fixture: a port where connects hang)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.mark.parametrize("source", list(S))
async def test_each_source_is_detected_and_healthy(
    emulator: Emulator, clock: FakeClock, source: S
) -> None:
    options = emulator.client_options(source)
    diagnosis = await diagnose(options.pop("environ"), **options, clock=clock, sleep=clock.sleep)
    assert diagnosis.healthy, diagnosis.render()
    assert diagnosis.source is source
    text = diagnosis.render()
    assert f"Source:  {source.label}" in text
    assert "got a token for https://management.azure.com/.default" in text
    assert "Timing:  answered in " in text
    assert text.endswith("HEALTHY")
    for secret in emulator.secrets():
        assert secret not in text
    if source in (S.APP_SERVICE, S.SERVICE_FABRIC, S.AZURE_ML):
        assert "characters, hidden" in text


async def test_refused_at_an_overridden_endpoint(clock: FakeClock) -> None:
    port = closed_port()
    environ = {"AZURE_POD_IDENTITY_AUTHORITY_HOST": f"http://127.0.0.1:{port}"}
    diagnosis = await diagnose(environ, clock=clock, sleep=clock.sleep)
    assert not diagnosis.healthy
    assert "did not answer (connection failed" in diagnosis.problem
    assert diagnosis.cause == (
        f"nothing listens at 127.0.0.1:{port}: the connection was refused "
        "(configured by AZURE_POD_IDENTITY_AUTHORITY_HOST)"
    )
    # The configured endpoint is named; the default address is not blamed.
    assert f"AZURE_POD_IDENTITY_AUTHORITY_HOST sends IMDS requests to 127.0.0.1:{port}" in (
        diagnosis.hint
    )
    assert "not an Azure VM" not in diagnosis.hint
    assert diagnosis.timing == "2 attempts in 0.2 s"  # one quick retry, on the fake clock
    assert "mi-credential emulate" in diagnosis.local
    text = diagnosis.render()
    assert "Timing:  2 attempts in 0.2 s" in text
    assert "Cause:   nothing listens at" in text
    assert "Locally: " in text


async def test_black_holed_endpoint(clock: FakeClock, request: pytest.FixtureRequest) -> None:
    port: int = request.getfixturevalue("black_hole")
    environ = {"AZURE_POD_IDENTITY_AUTHORITY_HOST": f"http://127.0.0.1:{port}"}
    diagnosis = await diagnose(environ, clock=clock, sleep=clock.sleep)  # one connect timeout
    assert not diagnosis.healthy
    assert "(timed out connecting)" in diagnosis.problem
    assert diagnosis.cause.startswith(
        f"connects to 127.0.0.1:{port} hang: a firewall, VPN or proxy drops them"
    )
    assert "Check the network path" in diagnosis.hint
    assert "not an Azure VM" not in diagnosis.hint
    assert diagnosis.timing.startswith("1 attempt in ")  # a black hole is not asked twice
    assert "mi-credential emulate" in diagnosis.local


@pytest.mark.parametrize("fault", [Fault.hang(), Fault.slow(3)], ids=["hang", "slow"])
async def test_slow_endpoint(emulator: Emulator, clock: FakeClock, fault: Fault) -> None:
    emulator.add_fault(fault)
    diagnosis = await diagnose(
        emulator.environ(S.IMDS), timeout=0.3, clock=clock, sleep=clock.sleep
    )
    assert not diagnosis.healthy
    assert "did not answer (timed out)" in diagnosis.problem
    assert diagnosis.cause.startswith("connected to 127.0.0.1:")
    assert "no answer came within the 0.3 s timeout" in diagnosis.cause
    assert "retry with a larger value, such as --timeout 10" in diagnosis.hint
    assert diagnosis.timing == "1 attempt in 0.0 s"  # the fake clock: only sleeps move it
    assert not diagnosis.local  # something is there: no suggestion to emulate


def unavailable(
    cause: str, *, attempts: int = 2, remembered: bool = False
) -> CredentialUnavailableError:
    """The error a probe of the default IMDS address gives, made without connecting."""
    message = (
        "IMDS managed identity endpoint http://169.254.169.254/metadata/identity/oauth2/token"
        f" did not answer ({cause}) after {attempts} attempts in 0.2 s."
    )
    if remembered:
        message += " (Remembered: the endpoint is asked again in 4.0 s.)"
    return CredentialUnavailableError(message, source=S.IMDS, attempts=attempts, elapsed=0.2)


def test_the_default_imds_address_is_explained_without_connecting() -> None:
    config = detect_source({})
    assert config is not None
    endpoint = endpoint_of(config)
    assert endpoint == Endpoint("169.254.169.254:80", None)
    for cause, seen in (
        ("connection failed: Connect call failed ('169.254.169.254', 80)", "nothing listens at"),
        ("connection failed: Network is unreachable", "could not be reached: Network is"),
        ("timed out connecting", "connects to 169.254.169.254:80 hang"),
    ):
        finding = explain(unavailable(cause), endpoint, 5.0)
        assert seen in finding.cause
        assert finding.cause.endswith("(the default IMDS address)")
        assert "probably not an Azure VM" in finding.fix
        assert finding.nothing_here
    slow = explain(unavailable("timed out", attempts=1), endpoint, 5.0)
    assert "within the 5 s timeout" in slow.cause and "--timeout 20" in slow.fix
    assert not slow.nothing_here
    remembered = unavailable("timed out connecting", attempts=0, remembered=True)
    assert "remembers the endpoint's earlier verdict" in describe_timing(remembered)


def test_other_sources_name_their_endpoint_variable() -> None:
    config = detect_source(
        {"IDENTITY_ENDPOINT": "http://[::1]:8081/msi/token", "IDENTITY_HEADER": "h"}
    )
    assert config is not None and config.source is S.APP_SERVICE
    endpoint = endpoint_of(config)
    assert endpoint == Endpoint("[::1]:8081", "IDENTITY_ENDPOINT")
    error = unavailable("connection failed: Connect call failed ('::1', 8081, 0, 0)")
    finding = explain(error, endpoint, 5.0)
    assert finding.cause.endswith("(configured by IDENTITY_ENDPOINT)")
    assert finding.fix.startswith("IDENTITY_ENDPOINT names [::1]:8081.")
    assert "169.254.169.254" not in finding.fix


async def test_wrong_identity(emulator: Emulator, clock: FakeClock) -> None:
    diagnosis = await diagnose(
        emulator.environ(S.IMDS), client_id="00000000-0000-0000-0000-0000000000aa",
        clock=clock, sleep=clock.sleep,
    )
    assert not diagnosis.healthy
    assert "is not assigned to this resource" in diagnosis.problem
    assert "Identity not found" in diagnosis.problem
    assert "Assign the identity" in diagnosis.hint


async def test_another_identity_s_token(emulator: Emulator, clock: FakeClock) -> None:
    emulator.add_fault(Fault.other_identity())
    diagnosis = await diagnose(
        emulator.environ(S.IMDS), client_id=emulator.user_identities[0].client_id,
        clock=clock, sleep=clock.sleep,
    )
    assert not diagnosis.healthy
    assert "answered with a token for another identity" in diagnosis.problem
    assert "supports selecting user-assigned identities" in diagnosis.hint


async def test_throttled(emulator: Emulator, clock: FakeClock) -> None:
    emulator.add_fault(Fault.status_code(429, retry_after=60, times=None))
    diagnosis = await diagnose(emulator.environ(S.APP_SERVICE), clock=clock, sleep=clock.sleep)
    assert not diagnosis.healthy
    assert "HTTP 429" in diagnosis.problem
    assert diagnosis.cause.endswith("answered HTTP 429")
    assert "throttling" in diagnosis.hint
    assert not diagnosis.local


async def test_malformed_and_undeterminable_environments() -> None:
    broken = await diagnose({"IDENTITY_ENDPOINT": "ftp://x", "IDENTITY_HEADER": "h"})
    assert not broken.healthy and "must be an http or https URL" in broken.problem
    partial = await diagnose({"IDENTITY_ENDPOINT": "http://127.0.0.1:1/x"})
    assert not partial.healthy and partial.source is None
    assert "No managed identity source can be determined" in partial.problem


async def run_cli(*args: str, environ: dict[str, str]) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if k not in environ}
    env.update(environ)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mi_credential", *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)  # never hangs
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_doctor_exit_codes(emulator: Emulator) -> None:
    code, out, _ = await run_cli("doctor", environ=emulator.environ(S.APP_SERVICE))
    assert code == 0 and out.rstrip().endswith("HEALTHY")
    emulator.add_fault(Fault.status_code(503, times=None))
    code, out, _ = await run_cli("doctor", "--timeout", "2", environ=emulator.environ(S.APP_SERVICE))
    assert code == 1 and out.rstrip().endswith("UNHEALTHY")
    assert emulator.secret not in out


async def test_token_command(emulator: Emulator) -> None:
    code, out, _ = await run_cli(
        "token", "--scope", "https://vault.azure.net/.default",
        environ=emulator.environ(S.APP_SERVICE),
    )
    assert code == 0
    assert "source:     App Service" in out
    assert "aud:        https://vault.azure.net" in out
    assert f"iss:        https://sts.windows.net/{emulator.tenant_id}/" in out
    for token in emulator.issued_tokens:
        assert token not in out
    code, out, _ = await run_cli(
        "token", "--scope", "https://vault.azure.net/.default", "--show-token",
        environ=emulator.environ(S.APP_SERVICE),
    )
    assert code == 0 and emulator.issued_tokens[-1] in out
    code, _, err = await run_cli(
        "token", "--scope", "https://vault.azure.net/.default", "--client-id", "nope",
        environ=emulator.environ(S.IMDS),
    )
    assert code == 1 and "is not assigned" in err


def test_decode_claims() -> None:
    assert decode_claims("a.b") is None
    assert decode_claims("a.!!!.c") is None
    assert decode_claims("e30.eyJhdWQiOiJ4In0.sig") == {"aud": "x"}


async def test_emulate_prints_a_working_environment() -> None:
    import signal

    from mi_credential import ManagedIdentityCredential

    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mi_credential", "emulate", "--source", "app_service",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    environ: dict[str, str] = {}
    try:
        while True:
            line = (await asyncio.wait_for(process.stdout.readline(), timeout=30)).decode()
            assert line, "emulate exited early"
            if line.startswith("export "):
                name, _, value = line.removeprefix("export ").strip().partition("=")
                environ[name] = value
            if line.startswith("# Ctrl-C"):
                break
        assert set(environ) == {"IDENTITY_ENDPOINT", "IDENTITY_HEADER"}
        async with ManagedIdentityCredential(environ=environ) as credential:
            token = await credential.get_token("https://vault.azure.net/.default")
        assert token.token.count(".") == 2
    finally:
        process.send_signal(signal.SIGINT)
        await asyncio.wait_for(process.communicate(), timeout=30)
    assert process.returncode == 0
