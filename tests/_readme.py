"""The README's Python blocks and set-up lines, and a way to run a block as a user would: as a
program of its own in a fresh interpreter, pointed at local stand-ins by environment variables.

A block may be preceded by one HTML comment saying how to run it::

    <!-- readme-test: api=orders.contoso.com app=/orders,/whoami -->

- no comment: a program, run as it is;
- ``api=HOST``: it calls ``https://HOST``, which the test serves on 127.0.0.1 (the block's
  text has ``HOST`` replaced by that ``127.0.0.1:PORT``, in URLs and keys alike);
- ``app=PATH,...``: a module defining an ASGI ``app``, served by uvicorn with its lifespan and
  sent ``GET PATH`` for each path;
- ``azurite``: it calls ``https://<account>.blob.core.windows.net``, replaced by Azurite's;
- ``fragment``: not a program; only checked to compile.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
BLOB_ACCOUNT = "https://<account>.blob.core.windows.net"
RUN_TIMEOUT = 120

_MARKER = re.compile(r"<!--\s*readme-test:\s*(?P<spec>.*?)\s*-->")

#: Serves the block's ``app`` with uvicorn, lifespan on, and prints ``PATH STATUS BODY`` for a
#: ``GET`` of each path given.
APP_DRIVER = """\
import asyncio
import sys
import time

import aiohttp
import uvicorn

import app as module


async def main() -> None:
    config = uvicorn.Config(module.app, host="127.0.0.1", port=0, log_level="warning")
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    deadline = time.monotonic() + 30
    while not server.started:
        if serving.done() or time.monotonic() > deadline:
            raise SystemExit("the app did not start")
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    async with aiohttp.ClientSession() as session:
        for path in sys.argv[1:]:
            async with session.get(f"http://127.0.0.1:{port}{path}") as response:
                print(path, response.status, await response.text())
    server.should_exit = True
    await serving


asyncio.run(main())
"""


@dataclass(frozen=True)
class Block:
    """A fenced ``python`` block of the README."""

    heading: str
    ordinal: int
    """1 for the section's first block, 2 for its second, ..."""
    line: int
    code: str
    spec: dict[str, str] = field(default_factory=dict)

    @property
    def id(self) -> str:
        words = re.sub(r"[^a-z0-9]+", "-", self.heading.lower()).strip("-")
        return f"{words}-{self.ordinal}"

    @property
    def paths(self) -> list[str]:
        return self.spec["app"].split(",") if "app" in self.spec else []


def blocks(path: Path = README) -> list[Block]:
    """Every ``python`` block, with the section it is in and its ``readme-test`` comment."""
    found: list[Block] = []
    heading, spec, code, start = "", "", None, 0
    previous = ""
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if code is not None:
            if line.startswith("```"):
                ordinal = 1 + sum(block.heading == heading for block in found)
                found.append(
                    Block(heading, ordinal, start, "\n".join(code) + "\n", _parse(spec))
                )
                code = None
            else:
                code.append(line)
            continue
        if line.startswith("#"):
            heading = line.lstrip("#").strip()
        elif line.startswith("```python"):
            marker = _MARKER.fullmatch(previous.strip())
            spec, code, start = (marker["spec"] if marker else ""), [], number
        if line.strip():
            previous = line
    return found


def _parse(spec: str) -> dict[str, str]:
    parsed: dict[str, str] = {}
    for word in spec.split():
        name, _, value = word.partition("=")
        parsed[name] = value
    return parsed


def set_up_lines(path: Path = README) -> dict[str, list[str]]:
    """The lines after each ``<!-- NAME-command -->`` marker, up to the next blank line."""
    lines = path.read_text(encoding="utf-8").splitlines()
    commands: dict[str, list[str]] = {}
    for index, line in enumerate(lines):
        marker = re.fullmatch(r"<!--\s*(?P<name>[a-z]+)-command\s*-->", line.strip())
        if marker:
            following: list[str] = []
            for text in lines[index + 1 :]:
                if not text.strip():
                    break
                following.append(text)
            commands.setdefault(marker["name"], []).extend(following)
    return commands


@dataclass(frozen=True)
class Run:
    returncode: int
    stdout: str
    stderr: str


async def run_block(block: Block, directory: Path, env: dict[str, str], code: str) -> Run:
    """Write ``code`` (the block's text, with stand-ins substituted) where a user would and run
    it: ``python -W error program.py``, or for an ``app`` block the app driver beside
    ``app.py``."""
    if block.paths:
        (directory / "app.py").write_text(code, encoding="utf-8")
        (directory / "driver.py").write_text(APP_DRIVER, encoding="utf-8")
        argv = ["driver.py", *block.paths]
    else:
        (directory / "program.py").write_text(code, encoding="utf-8")
        argv = ["program.py"]
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-W",
        "error",
        *argv,
        cwd=directory,
        env={**os.environ, **env},  # IMDS on loopback: conftest.children_off_the_network
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), RUN_TIMEOUT)
    except asyncio.TimeoutError:  # the builtin TimeoutError from Python 3.11
        process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    return Run(process.returncode, stdout.decode(), stderr.decode())
