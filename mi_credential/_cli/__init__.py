"""The ``python -m mi_credential`` / ``mi-credential`` command line.

``token``, ``doctor`` and ``emulate`` are modules of this package. ``demo`` is declared here (so
that ``--help`` lists it without importing anything) but lives above the integrations, in
``mi_credential_demo``, which the core never imports: it is found through its entry point in the
:data:`COMMANDS` group, and loaded only when it runs.

Exit codes: 0 success (``doctor``: healthy); 1 the command ran and found a problem (``doctor``:
unhealthy; ``token``: no token); 2 usage error; 3 a missing optional dependency (install the extra
the message names).

A usage error is one line on standard error, ``mi-credential COMMAND: error: ...``, never a
traceback: a value the parser refuses (:mod:`._options`), a :class:`UsageError` a command raises
before it starts anything, or a port a command cannot listen on (:mod:`._ports`).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import sys
from collections.abc import Callable, Coroutine, Sequence
from importlib.metadata import entry_points
from typing import Any

from .._models import ManagedIdentitySource
from .._version import __version__
from . import _options as check
from ._options import EXIT_USAGE, Once, Parser, UsageError, fail
from ._ports import listen_problem

EXIT_OK = 0
EXIT_PROBLEM = 1
EXIT_MISSING_DEPENDENCY = 3

__all__ = [
    "COMMANDS",
    "EXIT_MISSING_DEPENDENCY",
    "EXIT_OK",
    "EXIT_PROBLEM",
    "EXIT_USAGE",
    "UsageError",
    "build_parser",
    "main",
]

_EXTRA = {"demo": "demo", "emulate": "emulator"}

#: The entry-point group of the commands that other packages of this distribution provide; an
#: entry point names a coroutine function that takes the parsed arguments and returns the exit
#: code.
COMMANDS = "mi_credential.commands"

Command = Callable[[argparse.Namespace], Coroutine[Any, Any, int]]

_ONE_SCOPE = "one scope per request (run the command once per scope)"
_ONE_IDENTITY = "name one identity"


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
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
            "per source, the cache hit ratio, a line per metric (every series with --verbose) "
            "and the span tree; --html also writes the run as a page. No token or secret is "
            "printed. Exit code 0 if every step worked, 1 if one failed (or the OTLP export or "
            "the HTML page did), 2 if an option cannot be used (a port in use, say), 3 if an "
            "exporter an option needs is not installed."
        ),
    )
    demo.add_argument(
        "--otlp",
        action=Once,
        metavar="ENDPOINT",
        type=check.http_url,
        help="also send the spans and metrics over OTLP/HTTP to this collector, such as "
        "http://localhost:4318 (see samples/observability)",
    )
    demo.add_argument(
        "--prometheus-port",
        action=Once,
        metavar="PORT",
        type=check.port,
        help="serve the metrics in the Prometheus exposition format at "
        "http://127.0.0.1:PORT/metrics while the demo runs (0: any free port)",
    )
    demo.add_argument(
        "--hold",
        action=Once,
        metavar="SECONDS",
        type=check.seconds,
        default=0.0,
        help="after the report, keep everything running for SECONDS with a round of calls "
        "every second, for scrapes and dashboards (Ctrl-C ends it)",
    )
    demo.add_argument(
        "--verbose",
        action="store_true",
        help="print every metric series too, after the report's summary of each metric",
    )
    demo.add_argument(
        "--html",
        action=Once,
        metavar="PATH",
        type=check.nonempty,
        help="also write the report as a self-contained HTML page to PATH (again when the "
        "hold ends)",
    )
    demo.set_defaults(entry_point="demo", listens=(("--prometheus-port", "prometheus_port"),))

    token = commands.add_parser(
        "token",
        help="get a token from this machine's managed identity and describe it",
        description=(
            "Get a token from the real environment and print the source, timing, expiry and "
            "the non-secret claims (aud, iss, tid, oid, appid, exp). The token itself is "
            "printed only with --show-token."
        ),
    )
    token.add_argument(
        "--scope",
        action=Once,
        note=_ONE_SCOPE,
        required=True,
        type=check.scope,
        help="one scope, e.g. https://vault.azure.net/.default",
    )
    who = token.add_mutually_exclusive_group()
    for option, what in (
        ("--client-id", "client ID"),
        ("--object-id", "object ID"),
        ("--resource-id", "ARM resource ID"),
    ):
        who.add_argument(
            option,
            action=Once,
            note=_ONE_IDENTITY,
            type=check.identity_id,
            help=f"{what} of a user-assigned identity (default: the system-assigned one)",
        )
    token.add_argument("--show-token", action="store_true", help="print the access token too")
    token.add_argument(
        "--timeout", action=Once, type=check.timeout, default=30.0, help="seconds (default 30)"
    )
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
        "--scope",
        action=Once,
        note=_ONE_SCOPE,
        type=check.scope,
        default="https://management.azure.com/.default",
        help="scope to probe with (default: Resource Manager's)",
    )
    doctor.add_argument(
        "--client-id",
        action=Once,
        note=_ONE_IDENTITY,
        type=check.identity_id,
        help="client ID of a user-assigned identity to probe",
    )
    doctor.add_argument(
        "--timeout", action=Once, type=check.timeout, default=5.0, help="seconds (default 5)"
    )
    doctor.set_defaults(module="_doctor")

    emulate = commands.add_parser(
        "emulate",
        help="run the managed identity emulator and print the variables that point to it",
        description=(
            "Serve every managed identity endpoint on 127.0.0.1 until interrupted, and print "
            "the shell lines that make an application (this library or azure-identity) use "
            "it as one hosting source: App Service unless --source names another. The lines "
            "unset the other sources' variables, so pasted as they are they select that source."
        ),
    )
    emulate.add_argument(
        "--port", action=Once, type=check.port, default=0, help="HTTP port (default: any free)"
    )
    emulate.add_argument(
        "--https-port",
        action=Once,
        type=check.port,
        default=0,
        help="HTTPS port (default: any free)",
    )
    emulate.add_argument(
        "--source",
        action=Once,
        choices=[s.value for s in ManagedIdentitySource],
        help="the source whose variables are printed (default: app_service)",
    )
    emulate.add_argument(
        "--token-lifetime",
        action=Once,
        type=check.lifetime,
        default=86400,
        help="seconds a token lives (default 86400)",
    )
    emulate.add_argument(
        "--latency",
        action=Once,
        type=check.latency,
        default=0.0,
        help="seconds added before each token response (default 0)",
    )
    emulate.add_argument(
        "--arc-key-dir",
        action=Once,
        type=check.nonempty,
        help="where Azure Arc challenge key files go",
    )
    emulate.set_defaults(
        module="_emulate", listens=(("--port", "port"), ("--https-port", "https_port"))
    )
    return parser


def _command(args: argparse.Namespace) -> Command | None:
    """The ``run`` coroutine function of the command ``args`` names, imported now; ``None`` if
    no installed package provides its entry point.

    Raises:
        ModuleNotFoundError: The command needs an optional dependency that is not installed.
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
    except ModuleNotFoundError as exc:
        if not exc.name or exc.name.partition(".")[0].startswith("mi_credential"):
            raise  # a module of this package itself: a broken installation, not a missing extra
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
    prog = f"{parser.prog} {args.command}"
    try:
        code: int = asyncio.run(command(args))
    except KeyboardInterrupt:
        return EXIT_PROBLEM
    except UsageError as exc:
        return fail(prog, str(exc))
    except OSError as exc:  # a port that cannot be listened on is named; anything else is a bug
        ports = {option: getattr(args, dest) for option, dest in getattr(args, "listens", ())}
        problem = listen_problem(exc, ports)
        if problem is None:
            raise
        return fail(prog, problem)
    return code
