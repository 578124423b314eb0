"""The distribution as published: its license metadata, what the wheel and the sdist hold, and
dependency floors that agree with the ones CI installs (.ci/floors.txt)."""

from __future__ import annotations

import re
import subprocess
import sys
import tarfile
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

try:
    import tomllib
except ImportError:  # Python 3.10: hatchling's own TOML reader
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
PROJECT = PYPROJECT["project"]
FLOORS = ROOT / ".ci" / "floors.txt"
DEMO_FLOORS = ROOT / ".ci" / "floors-demo.txt"
#: Each floors file and the extras whose every floor it pins, with the runtime dependencies'.
#: CI installs each in a virtualenv of its own: the first with the core and integration tests,
#: the second with the demo and its tests (the dashboard's shared-cache row among them).
FLOOR_SETS = {
    FLOORS: ("emulator", "shared-cache", "starlette", "fastapi"),
    DEMO_FLOORS: ("emulator", "shared-cache", "demo"),
}
#: The extras whose OpenTelemetry packages are of the demo's release train (its Prometheus
#: exporter's), later than the API floor's.
DEMO_TRAIN_EXTRAS = ("demo", "dev")
PACKAGES = [
    "mi_credential",
    "mi_credential_aiohttp",
    "mi_credential_asgi",
    "mi_credential_azure_core",
    "mi_credential_demo",
]
#: The extras whose every floor CI installs, with the runtime dependencies, to run the tests on.
FLOORED_EXTRAS = ("emulator", "shared-cache", "starlette", "fastapi")


def requirements(extra: str | None = None) -> list[Requirement]:
    declared = PROJECT["dependencies"] if extra is None else PROJECT["optional-dependencies"][extra]
    return [Requirement(text) for text in declared]


def floor(requirement: Requirement) -> Version | None:
    found = [Version(s.version) for s in requirement.specifier if s.operator == ">="]
    return found[0] if found else None


def pinned(path: Path = FLOORS) -> dict[str, Version]:
    pins: dict[str, Version] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        text = line.split("#", 1)[0].strip()
        if text:
            name, _, version = text.partition("==")
            assert version, f"{path.name}: {line!r} is not name==version"
            pins[canonical(name)] = Version(version)
    return pins


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_the_license_is_mit_in_every_place_it_is_named() -> None:
    assert PROJECT["license"] == "MIT"
    assert PROJECT["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert text.startswith("MIT License\n")
    assert re.search(r"^Copyright \(c\) \d{4} mi-credential contributors$", text, re.M)
    assert '"license": "MIT"' in (ROOT / "package.json").read_text(encoding="utf-8")
    assert "hatchling>=1.27" in PYPROJECT["build-system"]["requires"]  # license expressions


def test_the_changelog_has_an_unreleased_section() -> None:
    text = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    assert text.startswith("# Changelog\n")
    assert "keepachangelog.com" in text
    assert re.search(r"^## \[Unreleased\]$", text, re.M)
    assert re.search(r"^### Added$", text, re.M)


def test_every_runtime_floor_is_pinned_in_the_floors_file() -> None:
    pins = pinned()
    for requirement in requirements() + [r for e in FLOOR_SETS[FLOORS] for r in requirements(e)]:
        assert floor(requirement) is not None, f"{requirement} has no floor"
        assert pins.get(canonical(requirement.name)) == floor(requirement), (
            f"{requirement}: .ci/floors.txt pins {pins.get(canonical(requirement.name))}"
        )
    for requirement in requirements("test"):  # the test tools: where pinned, at their floor
        if canonical(requirement.name) in pins:
            assert pins[canonical(requirement.name)] == floor(requirement), requirement


def test_every_demo_floor_is_pinned_in_the_demo_floors_file() -> None:
    pins = pinned(DEMO_FLOORS)
    declared = requirements() + [r for e in FLOOR_SETS[DEMO_FLOORS] for r in requirements(e)]
    for requirement in declared:
        if requirement.name == PROJECT["name"]:  # the demo's own extras, in the set already
            continue
        lowest = floor(requirement)
        assert lowest is not None, f"{requirement} has no floor"
        pin = pins.get(canonical(requirement.name))
        assert pin is not None, f"{requirement}: not in {DEMO_FLOORS.name}"
        if requirement.name == "opentelemetry-api":
            # The demo's SDK pins its own train's API exactly: that one, above the API floor.
            assert pin >= lowest and train(pin) == demo_train(), requirement
        else:
            assert pin == lowest, f"{requirement}: {DEMO_FLOORS.name} pins {pin}"


def test_a_package_has_one_floor_wherever_it_is_declared() -> None:
    """One floor per package, but for the OpenTelemetry packages of the demo's train."""
    floors: dict[tuple[str, bool], set[Version]] = {}
    for extra in [None, *PROJECT["optional-dependencies"]]:
        for requirement in requirements(extra):
            lowest = floor(requirement)
            if lowest is not None:
                demo = extra in DEMO_TRAIN_EXTRAS and requirement.name.startswith("opentelemetry-")
                floors.setdefault((canonical(requirement.name), demo), set()).add(lowest)
    assert {name: found for name, found in floors.items() if len(found) > 1} == {}


@pytest.mark.parametrize("path", list(FLOOR_SETS), ids=lambda path: path.name)
def test_a_floors_file_pins_only_declared_packages(path: Path) -> None:
    declared = {
        canonical(r.name)
        for extra in [None, *PROJECT["optional-dependencies"]]
        for r in requirements(extra)
    }
    assert set(pinned(path)) - declared == set()


def test_opentelemetry_bounds_are_release_trains() -> None:
    """SDK 1.X goes with the instrumentations and exporters 0.(X+21)b0. Every OpenTelemetry floor
    is of the API floor's train, but the demo's (and dev's copies of them), which are all of the
    demo's train; every cap is of one train."""
    api_floor = floor(next(r for r in requirements() if r.name == "opentelemetry-api"))
    assert api_floor is not None
    assert demo_train() > train(api_floor)
    caps: set[tuple[int, int]] = set()
    for extra in PROJECT["optional-dependencies"]:
        expected = demo_train() if extra in DEMO_TRAIN_EXTRAS else train(api_floor)
        for requirement in requirements(extra):
            if not requirement.name.startswith("opentelemetry-"):
                continue
            lowest = floor(requirement)
            assert lowest is not None
            assert train(lowest) == expected, requirement
            for spec in requirement.specifier:
                if spec.operator == "<=":
                    caps.add(train(Version(spec.version)))
    assert len(caps) == 1, f"the OpenTelemetry caps are of different trains: {caps}"


def demo_train() -> tuple[int, int]:
    sdk = next(r for r in requirements("demo") if r.name == "opentelemetry-sdk")
    lowest = floor(sdk)
    assert lowest is not None
    return train(lowest)


def train(version: Version) -> tuple[int, int]:
    """The release train of an OpenTelemetry version: (API minor, patch or beta number)."""
    if version.major == 1:
        return version.minor, version.micro
    assert version.pre is not None and version.pre[0] == "b", version
    return version.minor - 21, version.pre[1]


def test_the_extras_the_docs_name_exist() -> None:
    extras = set(PROJECT["optional-dependencies"])
    named: set[str] = set()
    for path in [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *ROOT.glob("integrations/*/*.py"),
                 *ROOT.glob("mi_credential/**/*.py"), *ROOT.glob("integrations/*/README.md")]:
        named |= set(re.findall(r"mi-credential\[([a-z-]+)\]", path.read_text(encoding="utf-8")))
    assert named
    assert named <= extras, f"extras named but not defined: {sorted(named - extras)}"


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    pytest.importorskip("hatchling", reason="building needs hatchling (the test extra has it)")
    out = tmp_path_factory.mktemp("dist")
    code = (
        "import sys\nfrom hatchling.build import build_sdist, build_wheel\n"
        "print(build_wheel(sys.argv[1]))\nprint(build_sdist(sys.argv[1]))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    wheel, sdist = result.stdout.split()
    return {"wheel": out / wheel, "sdist": out / sdist}


def test_the_wheel_declares_the_license_and_holds_it(built: dict[str, Path]) -> None:
    with zipfile.ZipFile(built["wheel"]) as wheel:
        names = wheel.namelist()
        info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
        metadata = Parser().parsestr(wheel.read(f"{info}/METADATA").decode())
        license_text = wheel.read(f"{info}/licenses/LICENSE").decode()
    assert metadata["License-Expression"] == "MIT"
    assert metadata.get_all("License-File") == ["LICENSE"]
    assert license_text == (ROOT / "LICENSE").read_text(encoding="utf-8")
    top = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert top == set(PACKAGES)  # never a package named `integrations`
    for package in PACKAGES:
        assert f"{package}/py.typed" in names
    requires = metadata.get_all("Requires-Dist")
    assert [r for r in requires if "extra ==" not in r] == [
        str(Requirement(text)) for text in sorted(PROJECT["dependencies"])
    ]


def test_the_sdist_holds_the_license_changelog_and_floors(built: dict[str, Path]) -> None:
    with tarfile.open(built["sdist"]) as sdist:
        names = {name.split("/", 1)[1] for name in sdist.getnames() if "/" in name}
    assert {"LICENSE", "CHANGELOG.md", "README.md", "pyproject.toml"} <= names
    assert {".ci/run", ".ci/floors.txt", ".ci/floors-demo.txt"} <= names
