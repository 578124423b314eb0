"""``doctor`` and ``token`` against the emulator: the right diagnosis and exit code, bounded."""

from __future__ import annotations

import asyncio
import os
import socket
import sys

import pytest

from mi_credential import ManagedIdentitySource as S
from mi_credential._cli._doctor import diagnose
from mi_credential._cli._token import decode_claims
from mi_credential.emulator import Emulator, Fault

from .conftest import FakeClock


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
    assert text.endswith("HEALTHY")
    for secret in emulator.secrets():
        assert secret not in text
    if source in (S.APP_SERVICE, S.SERVICE_FABRIC, S.AZURE_ML):
        assert "characters, hidden" in text


async def test_unreachable_endpoint(clock: FakeClock) -> None:
    environ = {"AZURE_POD_IDENTITY_AUTHORITY_HOST": f"http://127.0.0.1:{closed_port()}"}
    diagnosis = await diagnose(environ, clock=clock, sleep=clock.sleep)
    assert not diagnosis.healthy
    assert "did not answer (connection failed" in diagnosis.problem
    assert "probably not an Azure VM" in diagnosis.hint


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
    assert "throttling" in diagnosis.hint


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
            if line.startswith("Ctrl-C"):
                break
        assert set(environ) == {"IDENTITY_ENDPOINT", "IDENTITY_HEADER"}
        async with ManagedIdentityCredential(environ=environ) as credential:
            token = await credential.get_token("https://vault.azure.net/.default")
        assert token.token.count(".") == 2
    finally:
        process.send_signal(signal.SIGINT)
        await asyncio.wait_for(process.communicate(), timeout=30)
    assert process.returncode == 0
