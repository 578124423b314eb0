"""``demo``: every hosting source, end to end, against the in-process emulator."""

from __future__ import annotations

import argparse
import time

from .. import _constants
from .._credential import ManagedIdentityCredential
from .._errors import ManagedIdentityError
from .._models import ManagedIdentitySource
from ..emulator import Emulator

SCOPE = "https://storage.azure.com/.default"


def _duration(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} µs"
    return f"{seconds * 1e3:.1f} ms"


async def run(args: argparse.Namespace) -> int:
    print("mi-credential demo: every hosting source against the local emulator\n")
    failures = 0
    async with Emulator() as emulator:
        # The emulator writes Azure Arc challenge key files to its own directory.
        _constants.ARC_KEY_DIRECTORY = emulator.arc_key_dir
        print(f"  emulator: {emulator.http_url} (HTTP), {emulator.https_url} (HTTPS)")
        print(f"  scope:    {SCOPE}\n")
        header = (
            f"  {'source':<18} {'first call':>11} {'second call':>13}  {'expires in':>10}  token"
        )
        print(header)
        print("  " + "-" * (len(header) - 2))
        for source in ManagedIdentitySource:
            async with ManagedIdentityCredential(
                environ=emulator.environ(source), connection_verify=emulator.ca_file
            ) as credential:
                try:
                    start = time.perf_counter()
                    token = await credential.get_token(SCOPE)
                    first = time.perf_counter() - start
                    start = time.perf_counter()
                    again = await credential.get_token(SCOPE)
                    second = time.perf_counter() - start
                except ManagedIdentityError as exc:
                    failures += 1
                    print(f"  {source.label:<18} failed: {exc}")
                    continue
                claims = emulator.verify(token.token, audience="https://storage.azure.com")
                hit = "cache hit" if again is token else "NEW TOKEN"
                expires = (token.expires_on - time.time()) / 3600
                print(
                    f"  {source.label:<18} {_duration(first):>11} "
                    f"{_duration(second):>7} {hit:<5}  {expires:>8.1f} h  "
                    f"aud={claims['aud']} appid={claims['appid'][:8]}…"
                )
    print(
        "\n  Each first call is one token request to the emulated endpoint (Azure Arc: two, with "
        "its challenge);\n  the second is served from the cache. The tokens are RS256 JWTs the "
        "emulator signed;\n  their values are never printed."
    )
    return 1 if failures else 0
