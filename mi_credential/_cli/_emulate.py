"""``emulate``: run the emulator and print the shell lines that point applications at it.

The emulator serves every source at once, but an application uses one: the variables of two
sources together select whichever comes first in the detection order (Service Fabric's
``IDENTITY_SERVER_THUMBPRINT`` beside App Service's ``IDENTITY_ENDPOINT`` makes it Service
Fabric). So one block is printed, for one source, and it unsets every other source's variables:
pasted as a whole, into any shell, it selects that source and nothing else.

The default is App Service: its own two variables select it, ahead of every source but Service
Fabric, over plain HTTP with no CA to trust, and with the secret header that most hosted
platforms use (App Service, Functions, Container Apps). IMDS, the other plain-HTTP choice, is
only the fallback of detection: any other source's variable left in an application's
environment (one started from an IDE, say) silently wins over it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shlex
import signal
import sys

from .._constants import ARC_KEY_DIRECTORY
from .._constants import EnvironmentVariables as Env
from .._models import ManagedIdentitySource
from ..emulator import Emulator
from ._options import UsageError, shown

DEFAULT_SOURCE = ManagedIdentitySource.APP_SERVICE

#: Variables that select or configure a source: each block unsets those it does not set.
SOURCE_VARIABLES = tuple(n for n in Env.ALL if n != Env.AZURE_IDENTITY_DISABLE_MULTITENANTAUTH)

#: Sources whose endpoint is https with the emulator's own certificate, verified against a CA
#: (Service Fabric's is pinned by IDENTITY_SERVER_THUMBPRINT instead: no CA is needed).
_NEEDS_CA = frozenset({ManagedIdentitySource.WORKLOAD_IDENTITY})


def exports(emulator: Emulator, source: ManagedIdentitySource) -> list[str]:
    """The shell lines that make an application use ``source`` at the emulator, whatever the
    shell had set before: ``unset`` the other sources' variables, ``export`` this one's (and the
    CA file for an https endpoint). Comments start with ``#``."""
    environ = emulator.environ(source)
    lines = ["unset " + " ".join(name for name in SOURCE_VARIABLES if name not in environ)]
    lines += [f"export {name}={shlex.quote(value)}" for name, value in environ.items()]
    if source in _NEEDS_CA:
        ca_file = shlex.quote(emulator.ca_file)
        lines += [
            "# the endpoint is https with the emulator's certificate: trust its CA, for this",
            "# library and aiohttp (azure-identity's aio credentials) and for requests",
            "# (azure-identity's sync credentials). These replace the system's CA list in this",
            "# shell: unset them when done.",
            f"export SSL_CERT_FILE={ca_file}",
            f"export REQUESTS_CA_BUNDLE={ca_file}",
        ]
    if source is ManagedIdentitySource.AZURE_ARC and ARC_KEY_DIRECTORY is None:
        lines.append("# clients on this platform do not support Azure Arc (it has no agent)")
    elif source is ManagedIdentitySource.AZURE_ARC and emulator.arc_key_dir != ARC_KEY_DIRECTORY:
        lines += [
            f"# Azure Arc key files are written to {emulator.arc_key_dir}; clients read them",
            f"# only from {ARC_KEY_DIRECTORY}: to emulate Azure Arc for other processes, run as",
            f"# root with --arc-key-dir {ARC_KEY_DIRECTORY}",
        ]
    return lines


def render(emulator: Emulator, source: ManagedIdentitySource) -> list[str]:
    """Everything ``emulate`` prints before it waits: comments and ``source``'s block."""
    others = ", ".join(s.value for s in ManagedIdentitySource if s is not source)
    default = " (the default)" if source is DEFAULT_SOURCE else ""
    http, https = emulator.http_url, emulator.https_url
    return [
        f"# mi-credential emulator: {http} (IMDS, App Service, Azure Arc, Azure ML, Cloud "
        f"Shell), {https} (Service Fabric, Microsoft Entra ID)",
        f"# token signing keys: GET {http}/emulator/jwks; faults: POST {http}/emulator/faults;"
        f" requests: GET {http}/emulator/requests",
        "#",
        f"# {source.label}{default}: paste these lines into the shell that runs the application",
        *exports(emulator, source),
        "#",
        f"# Another source: mi-credential emulate --source NAME, NAME one of {others}",
        "# Ctrl-C to stop.",
    ]


def _key_directory(path: str) -> str:
    """``--arc-key-dir``, created if need be, or a usage error naming what is wrong with it."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise UsageError(f"--arc-key-dir {shown(path)} is not a directory")
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"--arc-key-dir {shown(path)}: {exc.strerror or exc}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise UsageError(f"--arc-key-dir {shown(path)}: this user may not write to it")
    return path


async def run(args: argparse.Namespace) -> int:
    if args.port and args.port == args.https_port:
        raise UsageError(f"--port and --https-port must differ (both are {args.port})")
    arc_key_dir = _key_directory(args.arc_key_dir) if args.arc_key_dir else None
    source = ManagedIdentitySource(args.source) if args.source else DEFAULT_SOURCE
    emulator = Emulator(
        port=args.port,
        https_port=args.https_port,
        token_lifetime=args.token_lifetime,
        latency=args.latency,
        arc_key_dir=arc_key_dir,
    )
    async with emulator:  # a failed start removes the emulator's files, then propagates
        print("\n".join(render(emulator, source)), flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):  # not on Windows
                loop.add_signal_handler(signum, stop.set)
        with contextlib.suppress(asyncio.CancelledError):  # Windows: Ctrl-C cancels
            await stop.wait()
    print("stopped.", file=sys.stderr)
    return 0
