"""Run every benchmark in one process and print one table of ratios; write the figures as JSON.

    python -m benchmarks              # everything (several minutes)
    python -m benchmarks --quick      # a smoke run
    python -m benchmarks credential aiohttp   # some of them
    python -m benchmarks --json out.json      # the JSON elsewhere than results/latest.json

Needs the ``bench`` extra (azure-identity, the reference): ``pip install -e ".[bench]"``.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import sys

from ._harness import Row, print_table, write_json

MODULES = ("credential", "availability", "aiohttp", "asgi", "azure_core", "shared_cache")


async def run_all(names: list[str], quick: bool) -> list[Row]:
    rows: list[Row] = []
    for name in names:
        module = importlib.import_module(f"benchmarks.bench_{name}")
        print(f"running {name} ...", file=sys.stderr, flush=True)
        rows += await module.run(quick)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description="Benchmarks against azure-identity."
    )
    parser.add_argument("names", nargs="*", metavar="NAME", help=", ".join(MODULES))
    parser.add_argument("--quick", action="store_true", help="a smoke run: fewer, shorter rounds")
    parser.add_argument(
        "--json",
        default=os.path.join(os.path.dirname(__file__), "results", "latest.json"),
        help="where to write the figures (default: benchmarks/results/latest.json)",
    )
    options = parser.parse_args()
    unknown = sorted(set(options.names) - set(MODULES))
    if unknown:
        parser.error(f"unknown benchmark {', '.join(unknown)} (choose from {', '.join(MODULES)})")
    rows = asyncio.run(run_all(options.names or list(MODULES), options.quick))
    print_table(rows)
    path = options.json
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_json(rows, path)
    print(f"\nfigures written to {path}")


if __name__ == "__main__":
    main()
