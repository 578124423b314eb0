"""A worker process of the shared cache tests: one credential, driven over stdin and stdout.

    python -m tests._shared_cache_worker '<options as JSON>'

Options: ``environ``, ``shared_cache``, ``timeout``, and ``fake_clock`` (true: the clock is the
``now`` of each command, so the test process sets the time every worker sees). Commands, one
JSON object per line: ``{"op": "get", "scope": ..., "now": ...}`` answers ``{"token": ...,
"expires_on": ..., "now": ...}`` or ``{"error": ...}``; ``{"op": "settle"}`` waits until no
background refresh is in flight. Prints ``{"ready": <pid>}`` first. Tokens printed here are the
emulator's, issued to this test run.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from typing import Any

from mi_credential import ManagedIdentityCredential

_now = [0.0]


def fake_clock() -> float:
    return _now[0]


def say(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


async def main(options: dict[str, Any]) -> None:
    credential = ManagedIdentityCredential(
        environ=options["environ"],
        shared_cache=options["shared_cache"],
        timeout=options.get("timeout", 90.0),
        clock=fake_clock if options.get("fake_clock") else None,
    )
    loop = asyncio.get_running_loop()
    async with credential:
        say({"ready": os.getpid()})
        while line := await loop.run_in_executor(None, sys.stdin.readline):
            command = json.loads(line)
            if command["op"] == "get":
                _now[0] = command.get("now", time.time())
                try:
                    token = await credential.get_token(command["scope"])
                except Exception as exc:
                    say({"error": f"{type(exc).__name__}: {exc}"})
                else:
                    clock = fake_clock() if options.get("fake_clock") else time.time()
                    say({"token": token.token, "expires_on": token.expires_on, "now": clock})
            elif command["op"] == "settle":
                await credential._cache.settle()
                say({"settled": True})


if __name__ == "__main__":
    asyncio.run(main(json.loads(sys.argv[1])))
