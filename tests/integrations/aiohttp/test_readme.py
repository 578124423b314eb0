"""The README's complete example runs as written (on a free port instead of 8081)."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from pathlib import Path

README = Path(__file__).parents[3] / "integrations" / "mi_credential_aiohttp" / "README.md"


def test_the_complete_example_runs() -> None:
    example = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)[0]
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    assert "8081" in example
    code = example.replace("8081", str(port))
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("200 {'caller': "), result.stdout
