"""The package's surface: exports, optional frameworks, dependency direction, typing marker."""

from __future__ import annotations

import ast
import inspect
import subprocess
import sys
from pathlib import Path

import mi_credential
import mi_credential_asgi

PACKAGE = Path(mi_credential_asgi.__file__).parent


def test_all_is_complete_and_exact() -> None:
    public = {
        name
        for name, value in vars(mi_credential_asgi).items()
        if not name.startswith("_") and not inspect.ismodule(value) and name != "annotations"
    }
    assert set(mi_credential_asgi.__all__) == public


def test_public_callables_have_docstrings() -> None:
    for name in mi_credential_asgi.__all__:
        value = getattr(mi_credential_asgi, name)
        if callable(value):
            assert inspect.getdoc(value), name


def test_importing_needs_no_framework() -> None:
    code = (
        "import sys, mi_credential_asgi; "
        "loaded = sorted({m.split('.')[0] for m in sys.modules} & {'starlette', 'fastapi'}); "
        "print(loaded)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


def test_imports_only_the_public_core_api() -> None:
    for path in PACKAGE.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                assert not node.module.startswith("mi_credential."), (path.name, node.module)
                if node.module == "mi_credential":
                    for alias in node.names:
                        assert alias.name in mi_credential.__all__, (path.name, alias.name)
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    assert not alias.name.startswith("mi_credential."), (path.name, alias.name)


def test_typed() -> None:
    assert (PACKAGE / "py.typed").is_file()
