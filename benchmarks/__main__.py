"""Run every benchmark in one process and print one table of ratios; write the figures as JSON.

    python -m benchmarks              # everything (several minutes)
    python -m benchmarks --quick      # a smoke run
    python -m benchmarks credential aiohttp   # some of them

Needs the ``bench`` extra (azure-identity, the reference): ``pip install -e ".[bench]"``.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import sys

from ._harness import Row, print_table, write_json

MODULES = ("credential", "aiohttp", "asgi", "azure_core")


async def run_all(names: list[str], quick: bool) -> list[Row]:
    rows: list[Row] = []
    for name in names:
        module = importlib.import_module(f"benchmarks.bench_{name}")
        print(f"running {name} ...", file=sys.stderr, flush=True)
        rows += await module.run(quick)
    return rows


def main() -> None:
    arguments = [a for a in sys.argv[1:] if not a.startswith("--")]
    quick = "--quick" in sys.argv
    names = [n for n in arguments if n in MODULES] or list(MODULES)
    rows = asyncio.run(run_all(names, quick))
    print_table(rows)
    directory = os.path.join(os.path.dirname(__file__), "results")
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, "latest.json")
    write_json(rows, path)
    print(f"\nfigures written to {path}")


if __name__ == "__main__":
    main()
