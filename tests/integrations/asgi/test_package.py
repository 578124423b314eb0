"""The package's surface: exports, optional frameworks, dependency direction, typing marker."""

from __future__ import annotations

import ast
import inspect
import subprocess
import sys
from pathlib import Path

import pytest

import mi_credential
import mi_credential.http
import mi_credential_aiohttp
import mi_credential_asgi
import mi_credential_azure_core

PACKAGE = Path(mi_credential_asgi.__file__).parent

#: The core's public modules, each with what it exports: all an integration may import from it.
PUBLIC_CORE = {
    "mi_credential": set(mi_credential.__all__),
    "mi_credential.http": set(mi_credential.http.__all__),
}


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


def private_core_imports(source: str) -> list[str]:
    """The imports in ``source`` of core names that ``mi_credential`` and ``mi_credential.http``
    do not export (private modules included)."""
    bad: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] == "mi_credential":
                exported = PUBLIC_CORE.get(node.module, set())
                bad += [f"{node.module}.{a.name}" for a in node.names if a.name not in exported]
        elif isinstance(node, ast.Import):
            bad += [
                alias.name
                for alias in node.names
                if alias.name.split(".")[0] == "mi_credential" and alias.name not in PUBLIC_CORE
            ]
    return bad


@pytest.mark.parametrize(
    "package",
    [
        Path(inspect.getfile(module)).parent
        for module in (mi_credential_asgi, mi_credential_aiohttp, mi_credential_azure_core)
    ],
    ids=lambda path: path.name,
)
def test_imports_only_the_public_core_api(package: Path) -> None:
    """This integration and its siblings import from the core only what ``mi_credential`` and
    ``mi_credential.http`` export."""
    for path in package.glob("*.py"):
        assert private_core_imports(path.read_text(encoding="utf-8")) == [], path.name


@pytest.mark.parametrize(
    ("source", "refused"),
    [
        ("from mi_credential import ManagedIdentityCredential", []),
        ("from mi_credential.http import TokenAdapter, check_scope", []),
        ("import mi_credential, mi_credential.http", []),
        ("import mi_credential_asgi._types", []),
        ("from mi_credential import _credential", ["mi_credential._credential"]),
        ("from mi_credential import http", ["mi_credential.http"]),
        ("from mi_credential.http import _OPTION_KEYS", ["mi_credential.http._OPTION_KEYS"]),
        ("from mi_credential._sources import Target", ["mi_credential._sources.Target"]),
        ("from mi_credential.emulator import Emulator", ["mi_credential.emulator.Emulator"]),
        ("import mi_credential._errors", ["mi_credential._errors"]),
    ],
)
def test_the_import_check_refuses_what_is_not_exported(source: str, refused: list[str]) -> None:
    assert private_core_imports(source) == refused


def test_typed() -> None:
    assert (PACKAGE / "py.typed").is_file()
