"""``emulate``: run the emulator and print the environment that points applications at it."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys

from .._models import ManagedIdentitySource
from ..emulator import Emulator


def exports(emulator: Emulator, source: ManagedIdentitySource) -> list[str]:
    """Shell lines that make an application use ``source`` at the emulator."""
    lines = [f"export {name}={value}" for name, value in emulator.environ(source).items()]
    if source in (ManagedIdentitySource.SERVICE_FABRIC, ManagedIdentitySource.WORKLOAD_IDENTITY):
        lines.append(
            f"# HTTPS with the emulator's own CA: SSL_CERT_FILE={emulator.ca_file} "
            "(aiohttp, mi-credential's connection_verify=), REQUESTS_CA_BUNDLE for requests"
        )
    if source is ManagedIdentitySource.AZURE_ARC:
        lines.append(
            f"# Azure Arc key files are written to {emulator.arc_key_dir}; clients read them "
            "only from the agent's directory (/var/opt/azcmagent/tokens): run with "
            "--arc-key-dir /var/opt/azcmagent/tokens as root to emulate Arc for other processes"
        )
    return lines


async def run(args: argparse.Namespace) -> int:
    sources = [ManagedIdentitySource(args.source)] if args.source else list(ManagedIdentitySource)
    emulator = Emulator(
        port=args.port,
        https_port=args.https_port,
        token_lifetime=args.token_lifetime,
        latency=args.latency,
        arc_key_dir=args.arc_key_dir,
    )
    async with emulator:
        print(f"mi-credential emulator on {emulator.http_url} and {emulator.https_url}")
        print(f"token signing keys: {emulator.http_url}/emulator/jwks")
        print(
            f"faults: POST {emulator.http_url}/emulator/faults; requests: GET "
            f"{emulator.http_url}/emulator/requests\n"
        )
        for source in sources:
            print(f"# {source.label}")
            for line in exports(emulator, source):
                print(line)
            print()
        print("Ctrl-C to stop.", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):  # not on Windows
                loop.add_signal_handler(signum, stop.set)
        with contextlib.suppress(asyncio.CancelledError):  # Windows: Ctrl-C cancels
            await stop.wait()
    print("stopped.", file=sys.stderr)
    return 0
