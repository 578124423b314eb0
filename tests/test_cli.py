"""The command line, run as users run it: in a subprocess."""

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


def test_demo_gets_a_token_through_every_source() -> None:
    result = run("demo")
    assert result.returncode == 0, result.stderr
    for label in ("IMDS", "App Service", "Azure Arc", "Service Fabric", "Azure ML",
                  "Cloud Shell", "workload identity"):
        line = next(line for line in result.stdout.splitlines() if line.strip().startswith(label))
        assert "cache hit" in line
        assert "aud=https://storage.azure.com" in line
    assert "eyJ" not in result.stdout  # no token is printed


def test_help() -> None:
    result = run("--help")
    assert result.returncode == 0
    assert "demo" in result.stdout
    assert run("demo", "--help").returncode == 0
    assert run("no-such-command").returncode == 2
