"""Shared fixtures: a clean environment, a fake clock, the emulator, and a secret scan that runs
after every test over everything logged."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import socket
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from mi_credential import ManagedIdentityCredential, ManagedIdentitySource
from mi_credential._constants import EnvironmentVariables
from mi_credential.emulator import Emulator

START = 1_800_000_000.0

_emulators: list[Emulator] = []


class FakeClock:
    """Wall and monotonic time in one, advanced only by :meth:`sleep` and :meth:`advance`."""

    def __init__(self, start: float = START) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


#: Where IMDS is for a child process the tests start: a loopback port nothing listens on (the
#: discard port), never 169.254.169.254, whatever the child ends up doing.
CHILD_IMDS = "http://127.0.0.1:9"


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """No managed identity variable of the machine running the tests leaks in."""
    for name in (*EnvironmentVariables.ALL, "MI_CREDENTIAL_SHARED_CACHE"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Fail a test that opens a connection to anything but loopback (such as IMDS at
    169.254.169.254, which a credential picks when no other source is configured)."""
    attempts: list[str] = []
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex

    def check(sock: socket.socket, address: Any) -> None:
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            host = str(address[0])
            try:
                loopback = ipaddress.ip_address(host.split("%")[0]).is_loopback
            except ValueError:  # a name, not an address
                loopback = host == "localhost"
            if not loopback:
                attempts.append(host)
                raise ConnectionRefusedError(f"tests connect to loopback only, not {host}")

    def connect(sock: socket.socket, address: Any) -> None:
        check(sock, address)
        real_connect(sock, address)

    def connect_ex(sock: socket.socket, address: Any) -> int:
        check(sock, address)
        return real_connect_ex(sock, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    yield attempts
    assert not attempts, f"a test tried to connect to {attempts}"


def off_the_network(env: dict[str, str] | None) -> dict[str, str] | None:
    """A child process's environment with IMDS on loopback (:data:`CHILD_IMDS`) unless it names
    an IMDS of its own: the in-process guard does not reach into children."""
    name = EnvironmentVariables.AZURE_POD_IDENTITY_AUTHORITY_HOST
    base = os.environ if env is None else env
    return env if name in base else {**base, name: CHILD_IMDS}


@pytest.fixture(autouse=True)
def children_off_the_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every process a test starts (``subprocess``, ``asyncio.create_subprocess_exec``) gets
    :func:`off_the_network`'s environment, so none falls back to 169.254.169.254."""
    real_init = subprocess.Popen.__init__

    def init(self: subprocess.Popen[Any], *args: Any, **kwargs: Any) -> None:
        kwargs["env"] = off_the_network(kwargs.get("env"))
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(subprocess.Popen, "__init__", init)


@pytest.fixture(autouse=True)
def secret_scan(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Capture every log record at DEBUG; after the test, no secret any emulator handed out may
    appear in any of them, and asyncio must not have reported a leaked session or task."""
    caplog.set_level(logging.DEBUG)
    _emulators.clear()
    yield
    secrets = [s for emulator in _emulators for s in emulator.secrets() if s]
    for record in caplog.records:
        text = record.getMessage()
        if record.exc_info:
            text += logging.Formatter().formatException(record.exc_info)
        for secret in secrets:
            assert secret not in text, f"a secret leaked into a log record: {record.name}"
        if record.name == "asyncio" and record.levelno >= logging.ERROR:
            pytest.fail(f"asyncio reported: {text}")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def emulator(clock: FakeClock) -> AsyncIterator[Emulator]:
    async with Emulator(clock=clock) as emu:
        _emulators.append(emu)
        yield emu


def register_emulator(emulator: Emulator) -> None:
    """Include an emulator created inside a test in the secret scan."""
    _emulators.append(emulator)


CredentialFactory = Callable[..., ManagedIdentityCredential]


@pytest.fixture
async def make_credential(
    emulator: Emulator, clock: FakeClock
) -> AsyncIterator[CredentialFactory]:
    """Credentials for a source of the emulator, on the fake clock; closed after the test."""
    created: list[ManagedIdentityCredential] = []

    def make(source: ManagedIdentitySource | str, **kwargs: Any) -> ManagedIdentityCredential:
        kwargs.setdefault("environ", emulator.environ(source))
        kwargs.setdefault("clock", clock)
        kwargs.setdefault("sleep", clock.sleep)
        kwargs.setdefault("connection_verify", emulator.ca_file)
        kwargs.setdefault("arc_key_directory", emulator.arc_key_dir)
        credential = ManagedIdentityCredential(**kwargs)
        created.append(credential)
        return credential

    yield make
    for credential in created:
        await credential.close()


ALL_SOURCES = list(ManagedIdentitySource)
