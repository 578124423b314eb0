"""Hostile token endpoints: response metadata echoing the identity header, bodies that break
decoders, numbers too large for a float, tokens no header can carry, absurd lifetimes, and a
token that expires in flight. Each is a typed error (or a clamped, documented outcome), and no
secret reaches any text. A real aiohttp server on 127.0.0.1 answers what each test scripts."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web

from mi_credential import (
    InvalidTokenResponseError,
    ManagedIdentityCredential,
    ManagedIdentityError,
    TokenRequestError,
)
from mi_credential._constants import MAX_TOKEN_LIFETIME
from mi_credential_aiohttp import create_session

from .._leaks import assert_no_secret
from ..conftest import FakeClock

pytestmark = pytest.mark.reliability

SCOPE = "https://storage.azure.com/.default"
SECRET = "CANARY-IDENTITY-HEADER-5be1"
JWT = "eyJhbGciOiJSUzI1NiJ9.eyJjYW5hcnkiOiI1YmUxIn0.Q0FOQVJZLXNpZ25hdHVyZQ"
TOKEN = "CANARY-ACCESS-TOKEN-5be1"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Endpoint:
    """An App Service-style endpoint answering with ``self.handler``."""

    def __init__(self) -> None:
        self.handler: Handler = self.ok
        self.url = ""
        self.requests = 0

    async def ok(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({"access_token": TOKEN, "expires_in": 3600})

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        return await self.handler(request)

    def environ(self) -> dict[str, str]:
        return {"IDENTITY_ENDPOINT": self.url, "IDENTITY_HEADER": SECRET}


@pytest.fixture
async def endpoint() -> AsyncIterator[Endpoint]:
    async with serve() as served:
        yield served


@contextlib.asynccontextmanager
async def serve() -> AsyncIterator[Endpoint]:
    """An :class:`Endpoint` on 127.0.0.1, for the block."""
    served = Endpoint()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", served.dispatch)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    served.url = f"http://127.0.0.1:{port}/msi/token"
    try:
        yield served
    finally:
        await runner.cleanup()


def credential_for(endpoint: Endpoint, clock: FakeClock, **kwargs: Any) -> ManagedIdentityCredential:
    return ManagedIdentityCredential(
        environ=endpoint.environ(), clock=clock, sleep=clock.sleep, **kwargs
    )


def assert_clean(error: BaseException, caplog: pytest.LogCaptureFixture | None = None) -> None:
    assert_no_secret(error, (SECRET, JWT, TOKEN), caplog.records if caplog else ())


async def failure(endpoint: Endpoint, clock: FakeClock, **kwargs: Any) -> ManagedIdentityError:
    async with credential_for(endpoint, clock, **kwargs) as credential:
        with pytest.raises(ManagedIdentityError) as caught:
            await credential.get_token(SCOPE)
    return caught.value


def respond(status: int = 200, *, body: bytes = b"", **kwargs: Any) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(status=status, body=body, **kwargs)

    return handler


@pytest.mark.parametrize("status", [200, 400, 403, 500])
@pytest.mark.parametrize("echo", [SECRET, JWT, f"{SECRET} and {JWT}"], ids=["header", "jwt", "both"])
async def test_reason_phrase_and_content_type_echoing_secrets_are_scrubbed(
    endpoint: Endpoint, clock: FakeClock, caplog: pytest.LogCaptureFixture, status: int, echo: str
) -> None:
    endpoint.handler = respond(
        status,
        body=b"<html>not a token</html>",
        reason=f"Echo {echo}",
        headers={"Content-Type": f"text/html; charset={echo}"},
    )
    error = await failure(endpoint, clock)
    assert f"HTTP {status}" in str(error)
    assert error.reason is not None and error.reason.startswith("Echo ")
    assert_clean(error, caplog)


def nested(depth: int) -> bytes:
    return b'{"a":' * depth + b"1" + b"}" * depth


@pytest.mark.parametrize(("status", "error_type"), [(200, InvalidTokenResponseError),
                                                    (403, TokenRequestError)])
async def test_a_deeply_nested_body_is_a_typed_error(
    endpoint: Endpoint, clock: FakeClock, status: int, error_type: type[Exception]
) -> None:
    endpoint.handler = respond(status, body=nested(200_000), content_type="application/json")
    error = await failure(endpoint, clock)
    assert type(error) is error_type


HUGE = "1" + "0" * 400  # an integer no float holds


@pytest.mark.parametrize(
    "body",
    [
        f'{{"access_token": "{TOKEN}", "expires_in": {HUGE}}}',
        f'{{"access_token": "{TOKEN}", "expires_on": {HUGE}}}',
        f'{{"access_token": "{TOKEN}", "expires_on": "{HUGE}"}}',
        f'{{"access_token": "{TOKEN}", "expires_in": -{HUGE}}}',
    ],
    ids=["expires_in", "expires_on", "expires_on-text", "negative"],
)
async def test_numbers_too_large_for_a_float_are_no_expiry(
    endpoint: Endpoint, clock: FakeClock, body: str
) -> None:
    endpoint.handler = respond(body=body.encode(), content_type="application/json")
    error = await failure(endpoint, clock)
    assert isinstance(error, InvalidTokenResponseError)
    assert_clean(error)


async def test_a_refresh_in_too_large_for_a_float_is_ignored(
    endpoint: Endpoint, clock: FakeClock
) -> None:
    body = f'{{"access_token": "{TOKEN}", "expires_in": 7200, "refresh_in": {HUGE}}}'
    endpoint.handler = respond(body=body.encode(), content_type="application/json")
    async with credential_for(endpoint, clock) as credential:
        info = await credential.get_token_info(SCOPE)
    assert info.refresh_on == int(clock()) + 3600  # half-life, as without refresh_in


@pytest.mark.parametrize(
    ("field", "value"),
    [("expires_in", 1e300), ("expires_on", 1e18), ("expires_in", 10 * 365 * 86400)],
)
async def test_an_absurd_lifetime_is_clamped_to_seven_days(
    endpoint: Endpoint, clock: FakeClock, field: str, value: float
) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.json_response({"access_token": TOKEN, field: value})

    endpoint.handler = handler
    async with credential_for(endpoint, clock) as credential:
        token = await credential.get_token(SCOPE)
        assert token.expires_on == int(clock()) + MAX_TOKEN_LIFETIME
        clock.advance(MAX_TOKEN_LIFETIME)  # a dead token is replaced
        await credential.get_token(SCOPE)
    assert endpoint.requests == 2


@pytest.mark.parametrize(
    "retry_after",
    [
        "Fri, 01 Jan 9999999999999999999 00:00:00 GMT",
        "Fri, 01 Jan 99999 00:00:00 GMT",
        "inf",
        "nan",
        "1e400",
    ],
)
async def test_an_absurd_retry_after_is_ignored(
    endpoint: Endpoint, clock: FakeClock, retry_after: str
) -> None:
    endpoint.handler = respond(503, body=b"{}", headers={"Retry-After": retry_after})
    error = await failure(endpoint, clock, timeout=10)
    assert isinstance(error, TokenRequestError) and error.status_code == 503
    assert error.attempts > 1  # retried on the usual back-off
    assert all(delay < 10 for delay in clock.sleeps)


@pytest.mark.parametrize("name", ["timeout", "connection_timeout", "read_timeout"])
@pytest.mark.parametrize("value", [float("inf"), float("nan"), 1e300, 10**400, True, -1, 0])
def test_timeouts_must_be_finite_and_reasonable(
    endpoint: Endpoint, name: str, value: object
) -> None:
    with pytest.raises(ValueError, match=name):
        ManagedIdentityCredential(environ=endpoint.environ(), **{name: value})


@pytest.mark.parametrize(
    "token",
    ["", "   ", "two words", "line\r\nbreak", "nul\x00byte", "tab\tbed", "t\u00f6k\u00e9n", "\x7f"],
    ids=["empty", "blank", "space", "crlf", "nul", "tab", "non-ascii", "del"],
)
async def test_a_token_no_header_can_carry_is_refused(
    endpoint: Endpoint, clock: FakeClock, token: str
) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.json_response({"access_token": token, "expires_in": 3600})

    endpoint.handler = handler
    error = await failure(endpoint, clock)
    assert isinstance(error, InvalidTokenResponseError)
    if token.strip():
        assert token not in str(error)


@pytest.mark.parametrize("token_type", ["Bearer\r\nX-Injected: 1", "Bearer extra", 42, "é"])
async def test_a_token_type_that_is_not_a_word_is_refused(
    endpoint: Endpoint, clock: FakeClock, token_type: object
) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        body = {"access_token": TOKEN, "expires_in": 3600, "token_type": token_type}
        return web.json_response(body)

    endpoint.handler = handler
    error = await failure(endpoint, clock)
    assert isinstance(error, InvalidTokenResponseError)
    assert_clean(error)


async def test_a_bad_token_through_the_aiohttp_middleware_is_a_typed_error(
    endpoint: Endpoint, clock: FakeClock
) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        if request.path == "/api":
            return web.Response(text="signed")
        return web.json_response({"access_token": "a\r\nX-Evil: 1", "expires_in": 3600})

    endpoint.handler = handler
    api = endpoint.url.replace("/msi/token", "/api")
    host = api.split("://", 1)[1].rsplit("/", 1)[0]  # 127.0.0.1:<port>
    async with credential_for(endpoint, clock) as credential, create_session(
        credential, {host: SCOPE}, allow_http=["127.0.0.1"]
    ) as session:
        with pytest.raises(InvalidTokenResponseError):
            await session.get(api)


async def test_a_token_that_expires_in_flight_is_not_handed_out(
    endpoint: Endpoint, clock: FakeClock
) -> None:
    arrived = asyncio.Event()
    answer = asyncio.Event()

    async def slow(request: web.Request) -> web.StreamResponse:
        arrived.set()
        await answer.wait()
        return web.json_response({"access_token": TOKEN, "expires_in": 1})

    endpoint.handler = slow
    async with credential_for(endpoint, clock, timeout=30) as credential:
        pending = asyncio.ensure_future(credential.get_token(SCOPE))
        await asyncio.wait_for(arrived.wait(), 10)
        clock.advance(1.5)  # the answer takes longer than the token lives
        answer.set()
        with pytest.raises(InvalidTokenResponseError, match="expired before the answer arrived"):
            await pending


async def test_a_sound_response_still_works(endpoint: Endpoint, clock: FakeClock) -> None:
    """The control: the server above, answering a plain token."""
    async with credential_for(endpoint, clock) as credential:
        assert (await credential.get_token(SCOPE)).token == TOKEN


async def test_nothing_but_typed_errors_escape(
    endpoint: Endpoint, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A sweep of odd bodies on every status class: only ManagedIdentityError subclasses."""
    bodies = [
        b"", b"null", b"[]", b'"text"', b"1e999", b"{" * 50, b"\xff\xfe", nested(5000),
        json.dumps({"access_token": TOKEN, "expires_in": "soon"}).encode(),
        json.dumps({"access_token": [TOKEN], "expires_in": 3600}).encode(),
        json.dumps({"error": {"code": ["x"] * 1000, "message": {"a": 1}}}).encode(),
    ]
    caplog.set_level(logging.DEBUG)
    for status in (200, 201, 400, 401, 404, 500):
        for body in bodies:
            endpoint.handler = respond(status, body=body, content_type="application/json")
            error = await failure(endpoint, clock, timeout=5)
            assert isinstance(error, ManagedIdentityError)
            assert_clean(error)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]



def serialised(value: object, depth: int = 4) -> list[str]:
    """What a reporter's serialiser takes from a local: its repr, and the items of containers
    (tuples, NamedTuples among them, lists, sets, dicts), a few levels deep."""
    texts = [repr(value)]
    if depth and isinstance(value, (tuple, list, set, frozenset)):
        for item in value:
            texts += serialised(item, depth - 1)
    elif depth and isinstance(value, dict):
        for key, item in value.items():
            texts += [repr(key), *serialised(item, depth - 1)]
    return texts


@pytest.mark.parametrize("status", [403, 500])
async def test_no_frame_of_the_traceback_holds_the_identity_header(
    endpoint: Endpoint, clock: FakeClock, status: int
) -> None:
    """Error reporters that capture local variables (Sentry does by default) find no secret
    in any frame of the traceback, nor of any cause's."""
    endpoint.handler = respond(status, body=b'{"error": "refused"}')
    error = await failure(endpoint, clock)
    current: BaseException | None = error
    frames = 0
    while current is not None:
        for frame, _ in traceback.walk_tb(current.__traceback__):
            frames += 1
            for name, value in frame.f_locals.items():
                for text in serialised(value):
                    assert SECRET not in text, f"{frame.f_code.co_name}: {name}"
        current = current.__cause__ or current.__context__
    assert frames  # the caller's frames are there: what is kept is still a traceback
