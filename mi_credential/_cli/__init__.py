"""The ``python -m mi_credential`` / ``mi-credential`` command line.

Exit codes: 0 success; 1 the command ran and found a problem; 2 usage error; 3 a missing optional
dependency (install the extra the message names).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from .._version import __version__

EXIT_OK = 0
EXIT_PROBLEM = 1
EXIT_USAGE = 2
EXIT_MISSING_DEPENDENCY = 3


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mi-credential",
        description="Azure managed identity tokens, with a local emulator of every endpoint.",
        epilog="Exit codes: 0 ok, 1 problem found, 2 usage error, 3 missing optional dependency.",
    )
    parser.add_argument("--version", action="version", version=f"mi-credential {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    demo = commands.add_parser(
        "demo",
        help="acquire tokens through every hosting source against the built-in emulator",
        description=(
            "Start the emulator in-process and acquire a token through each hosting source, "
            "showing latency, expiry and the cache."
        ),
    )
    demo.set_defaults(handler=_run_demo)
    return parser


def _run_demo(args: argparse.Namespace) -> int:
    try:
        from ._demo import run
    except ImportError as exc:
        print(
            f"The demo needs the emulator's dependencies ({exc.name} is missing): "
            'pip install "mi-credential[demo]"',
            file=sys.stderr,
        )
        return EXIT_MISSING_DEPENDENCY
    return asyncio.run(run(args))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    code: int = args.handler(args)
    return code
