"""The command line, run as users run it: in a subprocess. The demo: tests/test_demo.py."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import entry_points

import pytest

import mi_credential._cli as cli


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
