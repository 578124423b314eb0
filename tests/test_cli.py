"""The command line, run as users run it: in a subprocess. The demo: tests/test_demo.py."""

from __future__ import annotations

import subprocess
import sys


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
