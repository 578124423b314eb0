"""A missing optional dependency is an ImportError that names the extra to install, chained from
the original one. Each case runs in a fresh interpreter where the module is made unimportable
(``sys.modules[name] = None``), as if it were not installed."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

REPORT = """
def report(call):
    try:
        call()
    except ImportError as exc:
        cause = exc.__cause__
        print(type(exc).__name__, exc.name, type(cause).__name__, getattr(cause, "name", None))
        print(exc)
    else:
        print("no error")
"""


def run(missing: str, code: str) -> list[str]:
    script = f"import sys\nsys.modules[{missing!r}] = None\n{REPORT}\n{textwrap.dedent(code)}"
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    return result.stdout.splitlines()


@pytest.mark.parametrize("missing", ["jwt", "cryptography"])
def test_the_emulator_names_its_extra(missing: str) -> None:
    lines = run(missing, "report(lambda: __import__('mi_credential.emulator'))")
    assert lines == [
        f"ModuleNotFoundError {missing} ModuleNotFoundError {missing}",
        "mi_credential.emulator needs the emulator extra (PyJWT and cryptography), which is not "
        "installed: pip install 'mi-credential[emulator]'",
    ]


def test_the_core_imports_without_the_emulators_dependencies() -> None:
    code = """
    import mi_credential, mi_credential.http, mi_credential.telemetry
    sys.modules["cryptography"] = None
    report(lambda: mi_credential.ManagedIdentityCredential(environ={}))
    """
    assert run("jwt", code) == ["no error"]


@pytest.mark.parametrize(
    ("helper", "call"),
    [
        ("bearer_token", "m.bearer_token('https://vault.azure.net/.default')"),
        ("token_provider", "m.token_provider()"),
        ("problem_response", "m.problem_response(RuntimeError())"),
        ("readiness_route", "m.readiness_route()"),
        (
            "add_readiness_route",
            "m.add_readiness_route(types.SimpleNamespace(router=types.SimpleNamespace(routes=[])))",
        ),
    ],
)
def test_the_starlette_helpers_name_the_extra(helper: str, call: str) -> None:
    lines = run("starlette", f"import types, mi_credential_asgi as m\nreport(lambda: {call})")
    kind, name, cause, cause_name = lines[0].split()
    assert (kind, cause) == ("ModuleNotFoundError", "ModuleNotFoundError")
    assert name.startswith("starlette") and cause_name == name
    assert lines[1:] == [
        f"mi_credential_asgi.{helper} needs starlette, which is not installed: "
        "pip install 'mi-credential[starlette]' (or 'mi-credential[fastapi]')"
    ]


def test_the_asgi_middleware_needs_no_starlette() -> None:
    code = """
    import mi_credential_asgi as m
    report(lambda: m.ManagedIdentityMiddleware(lambda *a: None, credential_options={"environ": {}}))
    """
    assert run("starlette", code) == ["no error"]


def test_the_guarded_helpers_keep_their_name_signature_and_documentation() -> None:
    import inspect

    import mi_credential_asgi
    from mi_credential_asgi import _starlette

    for name in ("bearer_token", "token_provider", "problem_response", "readiness_route",
                 "add_readiness_route"):
        guarded, helper = getattr(mi_credential_asgi, name), getattr(_starlette, name)
        assert guarded.__name__ == name
        assert inspect.signature(guarded) == inspect.signature(helper)
        assert guarded.__doc__ == helper.__doc__
