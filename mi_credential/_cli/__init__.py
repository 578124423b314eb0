"""The ``python -m mi_credential`` / ``mi-credential`` command line.

``token``, ``doctor`` and ``emulate`` are modules of this package. ``demo`` is declared here (so
that ``--help`` lists it without importing anything) but lives above the integrations, in
``mi_credential_demo``, which the core never imports: it is found through its entry point in the
:data:`COMMANDS` group, and loaded only when it runs.

Exit codes: 0 success (``doctor``: healthy); 1 the command ran and found a problem (``doctor``:
unhealthy; ``token``: no token); 2 usage error; 3 a missing optional dependency (install the extra
the message names).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import sys
from collections.abc import Callable, Coroutine, Sequence
from importlib.metadata import entry_points
from typing import Any
from urllib.parse import urlsplit

from .._models import ManagedIdentitySource
from .._version import __version__

EXIT_OK = 0
EXIT_PROBLEM = 1
EXIT_USAGE = 2
EXIT_MISSING_DEPENDENCY = 3

_EXTRA = {"demo": "demo", "emulate": "emulator"}

#: The entry-point group of the commands that other packages of this distribution provide; an
#: entry point names a coroutine function that takes the parsed arguments and returns the exit
#: code.
COMMANDS = "mi_credential.commands"

Command = Callable[[argparse.Namespace], Coroutine[Any, Any, int]]


def _http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise argparse.ArgumentTypeError(f"not an http(s) URL: {value!r}")
    return value.rstrip("/")


def _port(value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"not a port number (0 to 65535): {value!r}")
    return port


def _seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds < float("inf"):
        raise argparse.ArgumentTypeError(f"not a number of seconds: {value!r}")
    return seconds


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mi-credential",
        description="Azure managed identity tokens, with a local emulator of every endpoint.",
        epilog=(
            "Exit codes: 0 ok/healthy, 1 problem found, 2 usage error, 3 missing optional "
            "dependency."
        ),
    )
    parser.add_argument("--version", action="version", version=f"mi-credential {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    demo = commands.add_parser(
        "demo",
        help="every integration end to end against the built-in emulator",
        description=(
            "Start the emulator in-process and show the library at work against it: the "
            "credential through each hosting source; a FastAPI app (ManagedIdentityMiddleware, "
            "served by uvicorn) calling a protected API through the aiohttp middleware; an "
            "azure-core pipeline client with BearerTokenPolicy. Then report acquisition latency "
            "per source, the cache hit ratio, the span tree and the metric values. No token or "
            "secret is printed. Exit code 0 if every step worked, 1 if one failed (or the OTLP "
            "export did), 3 if an exporter an option needs is not installed."
        ),
    )
    demo.add_argument(
        "--otlp",
        metavar="ENDPOINT",
        type=_http_url,
        help="also send the spans and metrics over OTLP/HTTP to this collector, such as "
        "http://localhost:4318 (see samples/observability)",
    )
    demo.add_argument(
        "--prometheus-port",
        metavar="PORT",
        type=_port,
        help="serve the metrics in the Prometheus exposition format at "
        "http://127.0.0.1:PORT/metrics while the demo runs (0: any free port)",
    )
    demo.add_argument(
        "--hold",
        metavar="SECONDS",
        type=_seconds,
        default=0.0,
        help="after the report, keep everything running for SECONDS with a round of calls "
        "every second, for scrapes and dashboards (Ctrl-C ends it)",
    )
    demo.set_defaults(entry_point="demo")

    token = commands.add_parser(
        "token",
        help="get a token from this machine's managed identity and describe it",
        description=(
            "Get a token from the real environment and print the source, timing, expiry and "
            "the non-secret claims (aud, iss, tid, oid, appid, exp). The token itself is "
            "printed only with --show-token."
        ),
    )
    token.add_argument("--scope", required=True, help="e.g. https://vault.azure.net/.default")
    who = token.add_mutually_exclusive_group()
    who.add_argument("--client-id", help="client ID of a user-assigned identity")
    who.add_argument("--object-id", help="object ID of a user-assigned identity")
    who.add_argument("--resource-id", help="ARM resource ID of a user-assigned identity")
    token.add_argument("--show-token", action="store_true", help="print the access token too")
    token.add_argument("--timeout", type=float, default=30.0, help="seconds (default 30)")
    token.set_defaults(module="_token")

    doctor = commands.add_parser(
        "doctor",
        help="why managed identity does (not) work here",
        description=(
            "Show which hosting source would be used and why (every relevant environment "
            "variable, secrets masked), probe its endpoint with a short timeout, and explain "
            "what failed. Exit code 0 if a token could be acquired, 1 otherwise."
        ),
    )
    doctor.add_argument(
        "--scope", default="https://management.azure.com/.default", help="scope to probe with"
    )
    doctor.add_argument("--client-id", help="client ID of a user-assigned identity to probe")
    doctor.add_argument("--timeout", type=float, default=5.0, help="seconds (default 5)")
    doctor.set_defaults(module="_doctor")

    emulate = commands.add_parser(
        "emulate",
        help="run the managed identity emulator and print the variables that point to it",
        description=(
            "Serve every managed identity endpoint on 127.0.0.1 until interrupted, and print "
            "the environment variables that make an application (this library or "
            "azure-identity) use it."
        ),
    )
    emulate.add_argument("--port", type=int, default=0, help="HTTP port (default: any free)")
    emulate.add_argument("--https-port", type=int, default=0, help="HTTPS port (default: any)")
    emulate.add_argument(
        "--source",
        choices=[s.value for s in ManagedIdentitySource],
        help="print the variables for this source only",
    )
    emulate.add_argument("--token-lifetime", type=int, default=86400, help="seconds")
    emulate.add_argument("--latency", type=float, default=0.0, help="seconds added per token")
    emulate.add_argument("--arc-key-dir", help="where Azure Arc challenge key files go")
    emulate.set_defaults(module="_emulate")
    return parser


def _command(args: argparse.Namespace) -> Command | None:
    """The ``run`` coroutine function of the command ``args`` names, imported now; ``None`` if
    no installed package provides its entry point.

    Raises:
        ImportError: The command needs an optional dependency that is not installed.
    """
    module = getattr(args, "module", None)
    if module is not None:
        run: Command = importlib.import_module(f"{__name__}.{module}").run
        return run
    found = tuple(entry_points(group=COMMANDS, name=args.entry_point))
    provided: Command | None = found[0].load() if found else None
    return provided


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    extra = _EXTRA.get(args.command, "emulator")
    try:
        command = _command(args)
    except ImportError as exc:
        print(
            f"'{args.command}' needs optional dependencies ({exc.name} is missing): "
            f'pip install "mi-credential[{extra}]"',
            file=sys.stderr,
        )
        return EXIT_MISSING_DEPENDENCY
    if command is None:
        # The installed metadata predates the command: an editable install is re-installed to
        # pick up a new entry point.
        print(
            f"'{args.command}' is not installed (no {COMMANDS!r} entry point named "
            f"{args.entry_point!r}): reinstall mi-credential, "
            f'pip install "mi-credential[{extra}]"',
            file=sys.stderr,
        )
        return EXIT_MISSING_DEPENDENCY
    try:
        code: int = asyncio.run(command(args))
    except KeyboardInterrupt:
        return EXIT_PROBLEM
    return code
