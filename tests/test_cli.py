"""The command line, run as users run it: in a subprocess. The demo: tests/test_demo.py."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from importlib.metadata import entry_points

import pytest

import mi_credential._cli as cli
from mi_credential import ManagedIdentitySource as S
from mi_credential._cli._emulate import SOURCE_VARIABLES
from mi_credential._environment import detect_source


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mi_credential", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_help() -> None:
    result = run("--help")
    assert result.returncode == 0
    assert "demo" in result.stdout
    assert run("demo", "--help").returncode == 0
    assert run("no-such-command").returncode == 2


def test_the_demo_is_found_through_its_entry_point() -> None:
    import mi_credential_demo

    (entry_point,) = entry_points(group=cli.COMMANDS, name="demo")
    assert entry_point.load() is mi_credential_demo.run


def test_a_command_no_package_provides_is_exit_code_3(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(cli, "entry_points", lambda **selection: ())
    assert cli.main(["demo"]) == cli.EXIT_MISSING_DEPENDENCY
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "'demo' is not installed" in captured.err
    assert 'pip install "mi-credential[demo]"' in captured.err


def test_only_a_missing_module_of_another_distribution_is_a_missing_extra(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An ImportError of another kind (a name a module lacks, or a module of this package
    missing: a broken installation) is not worded as an extra to install."""

    def load(error: ImportError) -> object:
        def entry_points(**selection: object) -> tuple[object, ...]:
            class EntryPoint:
                def load(self) -> object:
                    raise error

            return (EntryPoint(),)

        return entry_points

    monkeypatch.setattr(cli, "entry_points", load(ModuleNotFoundError("x", name="uvicorn")))
    assert cli.main(["demo"]) == cli.EXIT_MISSING_DEPENDENCY
    assert "(uvicorn is missing)" in capsys.readouterr().err
    for error in (
        ImportError("cannot import name 'Thing' from 'fastapi'", name="fastapi"),
        ModuleNotFoundError("x", name="mi_credential_demo._steps"),
    ):
        monkeypatch.setattr(cli, "entry_points", load(error))
        with pytest.raises(ImportError) as raised:
            cli.main(["demo"])
        assert raised.value is error
        assert "pip install" not in capsys.readouterr().err


# -- emulate: what it prints, pasted into a shell ------------------------------------------------

#: What a shell may hold before a block is pasted: every source's variables, pointing nowhere.
LEFTOVERS = {
    "IDENTITY_ENDPOINT": "http://127.0.0.1:9/stale",
    "IDENTITY_HEADER": "stale",
    "IDENTITY_SERVER_THUMBPRINT": "a" * 40,
    "IMDS_ENDPOINT": "http://127.0.0.1:9",
    "MSI_ENDPOINT": "http://127.0.0.1:9/stale",
    "MSI_SECRET": "stale",
    "AZURE_POD_IDENTITY_AUTHORITY_HOST": "http://127.0.0.1:9",
    "AZURE_AUTHORITY_HOST": "https://127.0.0.1:9",
    "AZURE_TENANT_ID": "stale",
    "AZURE_CLIENT_ID": "stale",
    "AZURE_FEDERATED_TOKEN_FILE": "/nonexistent/token",
}
assert set(LEFTOVERS) == set(SOURCE_VARIABLES)

_TLS_VARIABLES = ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE")


@contextlib.asynccontextmanager
async def emulating(*args: str) -> AsyncIterator[list[str]]:
    """Run ``emulate`` with ``args``; yield what it printed before waiting (bounded); stop it
    with Ctrl-C and check that it ended cleanly."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mi_credential", "emulate", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    lines: list[str] = []
    try:
        while not lines or not lines[-1].startswith("# Ctrl-C"):
            line = (await asyncio.wait_for(process.stdout.readline(), timeout=30)).decode()
            assert line, f"emulate exited early: {lines}"
            lines.append(line.rstrip("\n"))
        yield lines
    finally:
        process.send_signal(signal.SIGINT)
        _, err = await asyncio.wait_for(process.communicate(), timeout=30)
    assert process.returncode == 0
    assert err.decode() == "stopped.\n"


def block_of(lines: list[str]) -> tuple[list[str], dict[str, str], list[str]]:
    """The shell lines of an ``emulate`` output, the variables they export, and those they
    unset. Every line is a comment, an ``unset`` or an ``export``: all of it can be pasted."""
    shell, exported, unset = [], {}, []
    for line in lines:
        if line.startswith("#"):
            continue
        shell.append(line)
        command, *words = shlex.split(line)
        if command == "unset":
            unset += words
            continue
        assert command == "export" and len(words) == 1, line
        name, _, value = words[0].partition("=")
        assert name not in exported, f"{name} is exported twice"
        exported[name] = value
    return shell, exported, unset


def pasted(block: dict[str, str], unset: list[str]) -> dict[str, str]:
    """The environment of a shell holding :data:`LEFTOVERS` after the block is pasted."""
    environ = {k: v for k, v in LEFTOVERS.items() if k not in unset}
    environ.update(block)
    return environ


async def test_emulate_prints_one_source_by_default_and_names_the_others() -> None:
    async with emulating() as lines:
        shell, exported, unset = block_of(lines)
    assert "# App Service (the default): paste these lines" in "\n".join(lines)
    assert [line.split()[0] for line in shell] == ["unset", "export", "export"]
    assert set(exported) == {"IDENTITY_ENDPOINT", "IDENTITY_HEADER"}
    assert not set(exported) & set(unset)
    assert set(exported) | set(unset) == set(SOURCE_VARIABLES)
    config = detect_source(pasted(exported, unset))
    assert config is not None and config.source is S.APP_SERVICE
    others = next(line for line in lines if line.startswith("# Another source: "))
    assert "mi-credential emulate --source NAME" in others
    for source in S:
        assert (source.value in others) is (source is not S.APP_SERVICE)


@pytest.mark.parametrize("source", list(S), ids=[s.value for s in S])
async def test_each_block_pasted_into_a_used_shell_selects_its_source(source: S) -> None:
    async with emulating("--source", source.value) as lines:
        shell, exported, unset = block_of(lines)
        assert not set(exported) & set(unset)
        assert set(exported) | set(unset) >= set(SOURCE_VARIABLES)
        config = detect_source(pasted(exported, unset), arc_key_directory="/any")
        assert config is not None and config.source is source
        tls = [name for name in _TLS_VARIABLES if name in exported]
        # Only workload identity verifies a certificate against a CA: Service Fabric's is
        # pinned by IDENTITY_SERVER_THUMBPRINT.
        assert tls == (list(_TLS_VARIABLES) if source is S.WORKLOAD_IDENTITY else [])
        if source is S.AZURE_ARC:  # clients read key files only from the agent's directory
            assert any("--arc-key-dir" in line for line in lines)
            return
        if shutil.which("bash") is None:
            pytest.skip("pasting a block into a shell needs bash")
        result = await token_in_shell(shell)
        assert result[0] == 0, result
        assert f"source:     {source.label}\n" in result[1]
        if tls:  # without the CA, verification fails and the message says what to set
            untrusting = [line for line in shell if not line.startswith(tuple(
                f"export {name}=" for name in _TLS_VARIABLES))]
            code, _, err = await token_in_shell(untrusting)
            assert code == 1
            assert "the server certificate was not trusted" in err
            assert "set SSL_CERT_FILE to its PEM file" in err


async def token_in_shell(shell: list[str]) -> tuple[int, str, str]:
    """``token`` run in a bash holding :data:`LEFTOVERS`, after ``shell`` is pasted."""
    script = "\n".join([*shell, 'exec "$0" -m mi_credential token --scope "$1"'])
    env = {k: v for k, v in os.environ.items() if k not in _TLS_VARIABLES}
    env.update(LEFTOVERS)
    process = await asyncio.create_subprocess_exec(
        "bash", "-c", script, sys.executable, "https://vault.azure.net/.default", env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()
