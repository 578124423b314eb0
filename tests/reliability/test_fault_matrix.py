"""Every fault, for every source, through the emulator: the right outcome, a typed error where it
fails, and always within the deadline (fake clock, except where a real timeout is the point)."""

from __future__ import annotations

import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Any

import pytest

from mi_credential import (
    CredentialUnavailableError,
    InvalidTokenResponseError,
    ManagedIdentityCredential,
    ManagedIdentityError,
    TokenRequestError,
)
from mi_credential import ManagedIdentitySource as S
from mi_credential.emulator import Emulator, Fault

from ..conftest import FakeClock

pytestmark = [pytest.mark.reliability]
if sys.version_info < (3, 11):
    # On Python 3.10, asyncio's SSL transport is never marked closed when the peer drops a
    # connection after the handshake (3.11's rewrite of sslproto fixed it), and aiohttp has
    # nothing left to close: the ResourceWarning at garbage collection is CPython's, for any
    # HTTPS client. Only that message is ignored, and only there.
    pytestmark.append(
        pytest.mark.filterwarnings(
            "ignore:unclosed transport <asyncio.sslproto._SSLProtocolTransport:ResourceWarning"
        )
    )

SCOPE = "https://storage.azure.com/.default"
TIMEOUT = 90.0
ALL = list(S)


def status_attempts(source: S) -> int:
    return 6 if source is S.IMDS else 4


@dataclass
class Case:
    """One fault, and what must come of it."""

    name: str
    prepare: Callable[[Emulator, S], None]
    outcome: type[Exception] | None  # None: a token
    check: Callable[[Emulator, S, FakeClock, Any], None] = lambda *args: None
    credential: dict[str, Any] | None = None


def add(*faults: Fault) -> Callable[[Emulator, S], None]:
    def prepare(emulator: Emulator, source: S) -> None:
        for fault in faults:  # a fresh copy per test: the emulator counts faults down
            emulator.add_fault(replace(fault, source=source.value))

    return prepare


def token_body(**fields: Any) -> Callable[[Emulator, S], None]:
    """A 200 whose body is a real token from the emulator with fields replaced."""

    def prepare(emulator: Emulator, source: S) -> None:
        def body(request: Any) -> dict[str, Any]:
            from mi_credential.emulator import _crypto

            now = int(emulator.clock())
            token = _crypto.mint({"aud": "https://storage.azure.com", "exp": now + 3600})
            emulator.issued_tokens.append(token)
            payload: dict[str, Any] = {"access_token": token, "token_type": "Bearer"}
            payload.update(fields)
            return {k: v for k, v in payload.items() if v is not None}

        emulator.add_fault(Fault(source=source.value, status=200, body=body, times=None))

    return prepare


def expect_attempts(n: Callable[[S], int]) -> Callable[[Emulator, S, FakeClock, Any], None]:
    def check(emulator: Emulator, source: S, clock: FakeClock, result: Any) -> None:
        assert result.attempts == n(source)

    return check


def expect_sleeps(expected: list[float]) -> Callable[[Emulator, S, FakeClock, Any], None]:
    def check(emulator: Emulator, source: S, clock: FakeClock, result: Any) -> None:
        assert clock.sleeps == expected

    return check


def gone_check(emulator: Emulator, source: S, clock: FakeClock, result: Any) -> None:
    if source is S.IMDS:
        assert result.elapsed >= 70  # IMDS guidance: keep trying 410 for at least 70 s
    else:
        assert result.attempts == 1  # 410 is not transient elsewhere


def expiry_is(seconds: int) -> Callable[[Emulator, S, FakeClock, Any], None]:
    def check(emulator: Emulator, source: S, clock: FakeClock, result: Any) -> None:
        assert result.expires_on == int(clock()) + seconds

    return check


def at(moment: float, fmt: str) -> str:
    return datetime.fromtimestamp(moment, tz=timezone.utc).strftime(fmt)


def skewed(offset: float) -> Callable[[Emulator, S], None]:
    def prepare(emulator: Emulator, source: S) -> None:
        real = emulator.clock
        emulator.clock = lambda: real() + offset
        # The cluster issues the service account token on its own (the endpoint's) clock.
        with open(emulator.token_file, "w") as handle:
            handle.write(emulator.federated_token())

    return prepare


def valid_now(emulator: Emulator, source: S, clock: FakeClock, result: Any) -> None:
    assert result.expires_on > clock() + 3600


FUTURE = 1_800_000_000 + 7200  # the fake clock starts at 1.8e9

CASES = [
    Case("429 with Retry-After", add(Fault.status_code(429, retry_after=2, times=2)), None,
         expect_sleeps([2.0, 2.0])),
    Case("429 without Retry-After", add(Fault.status_code(429, times=None)), TokenRequestError,
         expect_attempts(status_attempts)),
    Case("410 for 70 s", add(Fault.status_code(410, times=None)), TokenRequestError, gone_check),
    Case("burst of 5xx", add(Fault.status_code(500), Fault.status_code(502),
                             Fault.status_code(503)), None),
    Case("connection reset mid-body", add(Fault.reset(times=1)), None),
    Case("connection dropped", add(Fault.drop(times=2)), None),
    Case("headers slower than the read timeout", add(Fault.slow(0.4, times=1)), None,
         credential={"read_timeout": 0.1}),
    Case("truncated JSON", add(Fault.raw(b'{"access_token": "eyJ0', times=None)),
         InvalidTokenResponseError),
    Case("HTML proxy page", add(Fault.html(times=None)), InvalidTokenResponseError),
    Case("many-MB body", add(Fault.raw(b"{" + b" " * (8 * 1024 * 1024) + b"}", times=None)),
         InvalidTokenResponseError),
    Case("no expiry fields", token_body(), InvalidTokenResponseError),
    Case("zero lifetime", token_body(expires_in=0), InvalidTokenResponseError),
    Case("negative lifetime", token_body(expires_in=-300), InvalidTokenResponseError),
    Case("expires_on in the past", token_body(expires_on=1_800_000_000 - 1),
         InvalidTokenResponseError),
    Case("expires_on epoch integer", token_body(expires_on=FUTURE), None, expiry_is(7200)),
    Case("expires_on epoch string", token_body(expires_on=str(FUTURE)), None, expiry_is(7200)),
    Case("expires_on fractional string", token_body(expires_on=f"{FUTURE}.25"), None,
         expiry_is(7200)),
    Case("expires_on Linux date", token_body(expires_on=at(FUTURE, "%m/%d/%Y %H:%M:%S +00:00")),
         None, expiry_is(7200)),
    Case("expires_on Windows date",
         token_body(expires_on=at(FUTURE, "%m/%d/%Y %I:%M:%S %p +00:00").lstrip("0")), None,
         expiry_is(7200)),
    Case("expires_on ISO 8601", token_body(expires_on=at(FUTURE, "%Y-%m-%dT%H:%M:%SZ")), None,
         expiry_is(7200)),
    Case("expires_in string", token_body(expires_in="3600"), None, expiry_is(3600)),
    Case("endpoint clock 1 h ahead", skewed(3600), None, valid_now),
    Case("endpoint clock 1 h behind", skewed(-3600), None, valid_now),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
@pytest.mark.parametrize("source", ALL)
async def test_fault(emulator: Emulator, clock: FakeClock, source: S, case: Case) -> None:
    case.prepare(emulator, source)
    credential = ManagedIdentityCredential(
        **emulator.client_options(source), clock=clock, sleep=clock.sleep, timeout=TIMEOUT,
        **(case.credential or {}),
    )
    start = clock()
    async with credential:
        if case.outcome is None:
            token = await credential.get_token(SCOPE)
            assert token.expires_on > clock()
            case.check(emulator, source, clock, token)
        else:
            with pytest.raises(case.outcome) as caught:
                await credential.get_token(SCOPE)
            error = caught.value
            assert isinstance(error, ManagedIdentityError)
            assert error.source is source
            assert error.elapsed <= TIMEOUT
            case.check(emulator, source, clock, error)
    assert clock() - start <= TIMEOUT


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.mark.parametrize("source", ALL)
async def test_connection_refused(emulator: Emulator, clock: FakeClock, source: S) -> None:
    port = closed_port()
    environ = {
        name: value.replace(emulator.http_url.rsplit(":", 1)[1], str(port)).replace(
            emulator.https_url.rsplit(":", 1)[1], str(port)
        )
        for name, value in emulator.environ(source).items()
    }
    async with ManagedIdentityCredential(
        environ=environ, clock=clock, sleep=clock.sleep, connection_verify=emulator.ca_file
    ) as credential:
        with pytest.raises(CredentialUnavailableError) as caught:
            await credential.get_token(SCOPE)
    # IMDS, never answered yet: a verdict after one quick retry; the other sources' platforms
    # announce their endpoint, so connection failures there are retried.
    assert caught.value.attempts == (2 if source is S.IMDS else 4)
    assert "connection failed" in str(caught.value)
    assert emulator.requests == []


@pytest.mark.parametrize("source", ALL)
async def test_an_endpoint_that_never_answers(emulator: Emulator, source: S) -> None:
    emulator.add_fault(Fault.hang(source=source.value, times=None))
    async with ManagedIdentityCredential(
        **emulator.client_options(source), timeout=0.3
    ) as credential:
        with pytest.raises(CredentialUnavailableError, match="timed out"):
            await credential.get_token(SCOPE)
