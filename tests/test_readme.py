"""The README as a newcomer uses it: its two set-up lines are the ones CI runs, and every Python
block runs as written, as a program of its own, against the local emulator (and a protected API
on 127.0.0.1 where it calls one). Blocks that need Azure Storage run against Azurite, in
tests/integrations/azure_core/test_readme_storage.py."""

from __future__ import annotations

import ast
import builtins
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import jwt
import pytest
from aiohttp import web

from mi_credential.emulator import Emulator

from ._readme import ROOT, Block, blocks, run_block, set_up_lines
from .conftest import register_emulator

BLOCKS = blocks()
ORDERS_AUDIENCE = "api://orders-api"
#: The APIs a block may call, by the host it names: the audience each one accepts.
APIS = {"orders.contoso.com": ORDERS_AUDIENCE}


def test_the_readme_has_python_blocks() -> None:
    headings = {block.heading for block in BLOCKS}
    assert {"Usage", "Signing aiohttp requests", "Starlette and FastAPI"} <= headings


def test_the_set_up_lines_are_two_one_line_commands_that_ci_runs() -> None:
    commands = set_up_lines()
    assert sorted(commands) == ["demo", "test"]
    for name, lines in commands.items():
        assert len(lines) == 1, f"the {name} command is one line: {lines}"
    venv = 'python3 -m venv .venv && . .venv/bin/activate && pip install -e ".['
    demo, test = commands["demo"][0].strip(), commands["test"][0].strip()
    assert demo == venv + 'demo]" && python -m mi_credential demo'
    assert test == venv + 'dev]" && python -m pytest'
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "readme_line demo" in ci and "readme_line test" in ci


@pytest.mark.parametrize("block", BLOCKS, ids=lambda block: block.id)
def test_every_block_is_a_whole_program(block: Block) -> None:
    """No top-level ``await`` or ``async with``, nothing undefined at module level: a program
    that runs as it is, pasted into a file (only a ``fragment`` is exempt)."""
    if "fragment" in block.spec:
        compile(block.code, block.id, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
        return
    compile(block.code, block.id, "exec")  # a top-level await is a SyntaxError here
    tree = ast.parse(block.code, block.id)
    defined = {"__name__", "__file__", *dir(builtins)}
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            defined |= {(alias.asname or alias.name).split(".")[0] for alias in node.names}
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            defined.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            defined.add(node.id)
        elif isinstance(node, ast.arg):
            defined.add(node.arg)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            defined.add(node.name)
    used = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
    assert used <= defined, f"undefined in {block.id}: {sorted(used - defined)}"


@dataclass
class ProtectedApi:
    """An HTTPS API on 127.0.0.1 that answers only tokens the emulator signed for its audience."""

    audience: str
    origin: str = ""
    accepted: list[str] = field(default_factory=list)
    refused: int = 0


@pytest.fixture
async def readme_emulator() -> AsyncIterator[Emulator]:
    """On the real clock: the blocks' credentials, in other processes, read that one."""
    async with Emulator() as emulator:
        register_emulator(emulator)
        yield emulator


@pytest.fixture
async def apis(readme_emulator: Emulator) -> AsyncIterator[dict[str, ProtectedApi]]:
    runners: list[web.AppRunner] = []
    served: dict[str, ProtectedApi] = {}
    for host, audience in APIS.items():
        api = ProtectedApi(audience)

        async def orders(request: web.Request, api: ProtectedApi = api) -> web.Response:
            scheme, _, token = request.headers.get("Authorization", "").partition(" ")
            try:
                claims = readme_emulator.verify(token, audience=api.audience)
            except jwt.InvalidTokenError:
                claims = None
            if scheme.lower() != "bearer" or claims is None:
                api.refused += 1
                return web.json_response(
                    {"error": "unauthorized"}, status=401, headers={"WWW-Authenticate": "Bearer"}
                )
            api.accepted.append(request.path)
            return web.json_response({"orders": [{"id": 1}], "caller": claims["oid"]})

        app = web.Application()
        app.router.add_get("/orders", orders)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=readme_emulator.server_ssl_context())
        await site.start()
        runners.append(runner)
        api.origin = f"127.0.0.1:{runner.addresses[0][1]}"
        served[host] = api
    yield served
    for runner in runners:
        await runner.cleanup()


RUNNABLE = [block for block in BLOCKS if not {"fragment", "azurite"} & set(block.spec)]


@pytest.mark.parametrize("block", RUNNABLE, ids=lambda block: block.id)
async def test_every_block_runs_as_written(
    block: Block, readme_emulator: Emulator, apis: dict[str, ProtectedApi], tmp_path: Path
) -> None:
    code = block.code
    called = block.spec.get("api")
    if called:
        code = code.replace(called, apis[called].origin)
    env = {
        **readme_emulator.environ("app_service"),
        "SSL_CERT_FILE": readme_emulator.ca_file,  # the protected API's certificate
    }
    result = await run_block(block, tmp_path, env, code)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr == "", result.stderr  # no warning, no unclosed session on the way out
    for secret in readme_emulator.secrets():
        assert secret not in result.stdout
    for path in block.paths:
        line = next(text for text in result.stdout.splitlines() if text.startswith(path + " "))
        _, status, body = line.split(" ", 2)
        assert status == "200", line
        json.loads(body)
    if called:
        assert apis[called].accepted, "the block's request reached the API without a token"
        assert apis[called].refused == 0
