"""Every sample runs as a user runs it, ``python samples/<name>.py --emulator``, against the
local emulator, and prints what it should. Warnings are errors in the sample's process too."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

SAMPLES = Path(__file__).parents[1] / "samples"
SUBSCRIPTION = r"^  Emulated subscription \(00000000-0000-0000-0000-000000000000\)$"

EXPECTED = {
    "credential_direct.py": [
        r"^source: +IMDS$",
        r"^scope: +https://management\.azure\.com/\.default$",
        r"^expires in: +2[34]\.\d h$",
        r"^second call: from the cache$",
    ],
    "aiohttp_client.py": [r"^1 subscription\(s\):$", SUBSCRIPTION],
    "azure_sdk_client.py": [r"^1 subscription\(s\):$", SUBSCRIPTION],
    "fastapi_app.py": [
        r"^GET /subscriptions -> 200 \{'subscriptions': \['Emulated subscription'\]\}$",
        r"^GET /health/identity -> 200 \{'ready': True, 'source': 'app_service', .*"
        r"'scope': 'https://management\.azure\.com/\.default', .*'warm_up': True\}\], "
        r"'last_error': None\}$",
    ],
    "observability/prometheus_exporter.py": [
        # Three rounds over two scopes: two acquisitions, four cache hits.
        r'^mi_credential_token_requests_total\{mi_credential_cache_result="hit",.*'
        r'mi_credential_source="imds",.*\} 4\.0$',
        r'^mi_credential_token_acquisition_duration_seconds_count\{.*'
        r'mi_credential_outcome="success",.*\} 2\.0$',
        r'^mi_credential_token_time_to_expiry_seconds\{.*'
        r'mi_credential_resource="https://vault\.azure\.net",.*\} 8\d{4}\.\d+$',
        r'^http_client_request_duration_seconds_count\{.*http_response_status_code="200",'
        r'.*otel_scope_name="mi_credential",.*\} 2\.0$',
    ],
}


def test_every_sample_is_tested() -> None:
    programs = {
        str(path.relative_to(SAMPLES))
        for path in SAMPLES.rglob("*.py")
        if not path.name.startswith("_")
    }
    assert programs == set(EXPECTED)


@pytest.mark.parametrize("sample", sorted(EXPECTED))
def test_sample_runs_against_the_emulator(sample: str) -> None:
    result = subprocess.run(
        [sys.executable, "-W", "error", str(SAMPLES / sample), "--emulator"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for pattern in EXPECTED[sample]:
        assert re.search(pattern, result.stdout, re.M), f"{pattern}\n{result.stdout}"
    # No warning (unclosed session, ...) reported on the way out, and no token printed.
    assert result.stderr == "", result.stderr
    assert "eyJ" not in result.stdout


@pytest.mark.parametrize("sample", sorted(EXPECTED))
def test_sample_help(sample: str) -> None:
    result = subprocess.run(
        [sys.executable, str(SAMPLES / sample), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "--emulator" in result.stdout
