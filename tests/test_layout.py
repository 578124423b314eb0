"""The code stays in pieces a reader takes in at one sitting: no module of the package or the
integrations over 400 lines, no class over 300."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MODULES = sorted(
    path
    for folder in ("mi_credential", "integrations")
    for path in (ROOT / folder).rglob("*.py")
    if "__pycache__" not in path.parts
)
MAX_MODULE_LINES = 400
MAX_CLASS_LINES = 300


def test_there_are_modules_to_check() -> None:
    names = {path.name for path in MODULES}
    assert {"_credential.py", "_cache.py", "_acquire.py", "http.py"} <= names


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_module_and_class_sizes(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    assert text.count("\n") <= MAX_MODULE_LINES
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.ClassDef):
            assert node.end_lineno is not None
            size = node.end_lineno - node.lineno + 1
            assert size <= MAX_CLASS_LINES, f"class {node.name} has {size} lines"
