"""The emulator against hostile clients: ill-typed faults, JSON bombs, malformed forms and
queries, a cleared log under requests in flight, long runs, foreign Host headers (DNS
rebinding), other sites' pages and proxies. Bad input gets a 4xx, never a 500; all over real HTTP
on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
from aiohttp.http_exceptions import HttpProcessingError
from yarl import URL

from mi_credential import ManagedIdentitySource as S
from mi_credential._constants import (
    APP_SERVICE_API_VERSION,
    AZURE_ARC_API_VERSION,
    AZURE_ML_API_VERSION,
    IMDS_API_VERSION,
    SERVICE_FABRIC_API_VERSION,
)
from mi_credential.emulator import Emulator, Fault
from mi_credential.emulator._admin import MAX_FAULTS
from mi_credential.emulator._recording import DEFAULT_HISTORY
from mi_credential.emulator._schema import MAX_BODY, MAX_DEPTH

from .conftest import FakeClock, register_emulator

IMDS_PATH = f"/metadata/identity/oauth2/token?api-version={IMDS_API_VERSION}&resource=https://r"
JSON = {"Content-Type": "application/json"}


@pytest.fixture
async def session() -> Any:
    async with aiohttp.ClientSession() as client:
        yield client


@pytest.fixture
def server_errors(caplog: pytest.LogCaptureFixture) -> Iterator[list[logging.LogRecord]]:
    """After the test: no request made the emulator's code fail (aiohttp logs a handler's
    exception at ERROR). aiohttp's own refusals of unparsable HTTP are allowed."""
    records: list[logging.LogRecord] = []
    yield records
    for record in caplog.records:
        if record.name.startswith("aiohttp") and record.levelno >= logging.ERROR:
            exc = record.exc_info[1] if record.exc_info else None
            if not isinstance(exc, HttpProcessingError):
                records.append(record)
    assert not records, [r.getMessage() for r in records]


async def imds(session: aiohttp.ClientSession, emulator: Emulator, **headers: str) -> int:
    async with session.get(
        emulator.http_url + IMDS_PATH, headers={"Metadata": "true", **headers}
    ) as response:
        await response.read()
        return response.status


async def raw(emulator: Emulator, request: bytes) -> tuple[int, bytes]:
    """Send ``request`` as is on a fresh connection; the status and body of the answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", URL(emulator.http_url).port)
    try:
        writer.write(request)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


# -- 1. every field of a posted fault is checked --------------------------------------------------

INVALID_FAULTS = [
    ({"status": "abc"}, "status"),
    ({"status": True}, "status"),
    ({"status": 1.5}, "status"),
    ({"status": 99}, "status"),
    ({"status": 600}, "status"),
    ({"status": 0, "action": "drop"}, "status"),
    ({"times": "x"}, "times"),
    ({"times": 0}, "times"),
    ({"times": -1}, "times"),
    ({"times": True}, "times"),
    ({"times": 2.5}, "times"),
    ({"delay": "x"}, "delay"),
    ({"delay": -1}, "delay"),
    ({"delay": 10**9}, "delay"),
    ({"delay": False}, "delay"),
    ({"headers": "x"}, "headers"),
    ({"headers": ["Retry-After", "1"]}, "headers"),
    ({"headers": {"Retry-After": 1}}, "headers.Retry-After"),
    ({"headers": {"X-A": "b\r\nSet-Cookie: injected=1"}}, "headers.X-A"),
    ({"headers": {"X-A": "b\nc"}}, "headers.X-A"),
    ({"headers": {"X-A": "b\x00"}}, "headers.X-A"),
    ({"headers": {"Bad Name": "v"}}, "headers"),
    ({"headers": {"": "v"}}, "headers"),
    ({"headers": {"X:A": "v"}}, "headers"),
    ({"headers": {"Content-Length": "3"}}, "headers"),
    ({"headers": {"transfer-encoding": "chunked"}}, "headers"),
    ({"headers": {f"X-{i}": "v" for i in range(65)}}, "headers"),
    ({"source": 5}, "source"),
    ({"source": "mars"}, "source"),
    ({"action": "explode"}, "action"),
    ({"action": ["drop"]}, "action"),
    ({"content_type": 5}, "content_type"),
    ({"content_type": "text/html\r\nX-Injected: 1"}, "content_type"),
    ({"skip": -1}, "skip"),
    ({"skip": "1"}, "skip"),
    ({"action": "other_identity", "identity": "c"}, "identity"),
    ({"action": "other_identity", "identity": {"client_id": "c"}}, "identity"),
    (
        {"action": "other_identity", "identity": {"client_id": 1, "object_id": "o", "resource_id": "r"}},
        "identity.client_id",
    ),
    ({"identity": {"client_id": "c", "object_id": "o", "resource_id": "/r"}}, "identity"),
    ({"colour": 1}, "colour"),
]


@pytest.mark.parametrize(("fault", "field"), INVALID_FAULTS, ids=lambda v: repr(v)[:60])
async def test_an_ill_typed_fault_is_refused_naming_its_field(
    emulator: Emulator, session: aiohttp.ClientSession, fault: dict[str, Any], field: str,
    server_errors: list[logging.LogRecord],
) -> None:
    async with session.post(emulator.http_url + "/emulator/faults", json=fault) as response:
        assert response.status == 400
        assert response.content_type == "application/json"
        body = await response.json()
    assert body["field"] == field
    assert field.split(".")[0] in body["error"]
    assert emulator.faults == []
    assert await imds(session, emulator) == 200  # token requests go on as before


async def test_nan_and_infinity_are_not_json(
    emulator: Emulator, session: aiohttp.ClientSession
) -> None:
    for text in ('{"delay": NaN}', '{"delay": Infinity}', '{"status": -Infinity}'):
        async with session.post(
            emulator.http_url + "/emulator/faults", data=text, headers=JSON
        ) as response:
            assert response.status == 400
            assert "not JSON" in (await response.json())["error"]
    async with session.post(  # a number that parses to infinity is no delay either
        emulator.http_url + "/emulator/faults", data='{"delay": 1e999}', headers=JSON
    ) as response:
        assert response.status == 400
        assert (await response.json())["field"] == "delay"
    assert emulator.faults == []


async def test_a_list_with_one_bad_fault_adds_none_of_them(
    emulator: Emulator, session: aiohttp.ClientSession
) -> None:
    faults = [{"status": 503, "times": 2}, {"source": "imds", "status": "abc"}]
    async with session.post(emulator.http_url + "/emulator/faults", json=faults) as response:
        assert response.status == 400
        body = await response.json()
    assert (body["index"], body["field"]) == (1, "status")
    assert body["error"].startswith("fault 1: status")
    assert emulator.faults == []
    async with session.post(emulator.http_url + "/emulator/faults", json=[1]) as response:
        assert response.status == 400
        assert (await response.json())["index"] == 0


async def test_well_typed_faults_at_the_edges_of_their_ranges_are_taken(
    emulator: Emulator, session: aiohttp.ClientSession
) -> None:
    faults = [
        {"source": "azure_ml", "status": 100, "times": None, "delay": 600},
        {"source": "azure_ml", "status": 599, "skip": 0, "content_type": "text/plain"},
        {"source": "azure_ml", "status": 0, "delay": 0.5},  # served normally, after the delay
        {"source": "azure_ml", "action": "other_identity",
         "identity": {"client_id": "c", "object_id": "o", "resource_id": "/r"}},
        {"source": "imds", "status": 429, "headers": {"Retry-After": "2", "X-Tab": "a\tb"},
         "body": {"error": "throttled", "nested": [[[1]]]}, "times": 1},
    ]
    async with session.post(emulator.http_url + "/emulator/faults", json=faults) as response:
        assert response.status == 201
        assert await response.json() == {"added": 5}
    async with session.get(
        emulator.http_url + IMDS_PATH, headers={"Metadata": "true"}
    ) as response:
        assert response.status == 429
        assert response.headers["Retry-After"] == "2"
        assert await response.json() == {"error": "throttled", "nested": [[[1]]]}
    assert await imds(session, emulator) == 200


# -- 2. bombs, oversized bodies and malformed multipart: 400, never 500 ----------------------------


async def test_a_nested_json_bomb_is_refused(
    emulator: Emulator, session: aiohttp.ClientSession, server_errors: list[logging.LogRecord]
) -> None:
    for bomb in ("[" * 100_000 + "]" * 100_000, '{"body": ' * 40 + "1" + "}" * 40):
        async with session.post(
            emulator.http_url + "/emulator/faults", data=bomb, headers=JSON
        ) as response:
            assert response.status == 400
            assert f"deeper than {MAX_DEPTH}" in (await response.json())["error"]
    assert emulator.faults == []


async def test_admin_bodies_are_bounded(
    emulator: Emulator, session: aiohttp.ClientSession, server_errors: list[logging.LogRecord]
) -> None:
    big = b'{"body": "' + b"x" * MAX_BODY + b'"}'
    async with session.post(
        emulator.http_url + "/emulator/faults", data=big, headers=JSON
    ) as response:
        assert response.status == 413
        assert str(MAX_BODY) in (await response.json())["error"]

    async def chunked() -> Any:  # no Content-Length: the bound is counted as the body arrives
        for _ in range(MAX_BODY // 1024 + 2):
            yield b" " * 1024

    async with session.post(
        emulator.http_url + "/emulator/faults", data=chunked(), headers=JSON
    ) as response:
        assert response.status == 413
    assert emulator.faults == []


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("text/plain", b'{"status": 503}'),  # what a page of another site can send unasked
        ("application/x-www-form-urlencoded", b'{"status": 503}'),
        ("multipart/form-data; boundary=b", b'{"status": 503}'),
        (None, b'{"status": 503}'),
    ],
)
async def test_admin_posts_must_be_json(
    emulator: Emulator, session: aiohttp.ClientSession, content_type: str | None, body: bytes
) -> None:
    headers = {} if content_type is None else {"Content-Type": content_type}
    async with session.post(
        emulator.http_url + "/emulator/faults", data=body, headers=headers,
        skip_auto_headers=["Content-Type"],
    ) as response:
        assert response.status == 415
    assert emulator.faults == []


@pytest.mark.parametrize(
    "body",
    [b"\xff\xfe{}", b"{", b"", b'{"status": 1' + b"0" * 5000 + b"}", b"\xef\xbb\xbf{}"],
    ids=["not-utf8", "truncated", "empty", "huge-integer", "bom"],
)
async def test_admin_bodies_that_are_not_json(
    emulator: Emulator, session: aiohttp.ClientSession, body: bytes,
    server_errors: list[logging.LogRecord],
) -> None:
    async with session.post(
        emulator.http_url + "/emulator/faults", data=body, headers=JSON
    ) as response:
        assert response.status == 400
        assert "error" in await response.json()


MULTIPART = "multipart/form-data; boundary=b"
FIELD = b'Content-Disposition: form-data; name="resource"\r\n'
BAD_FORMS = {
    "no boundary": ("multipart/form-data", b"resource=r"),
    "no starting boundary": (MULTIPART, b"garbage"),
    "truncated": (MULTIPART, b"--b\r\n" + FIELD + b"\r\nhttps://r"),
    "part without a name": (MULTIPART, b"--b\r\n\r\nhttps://r\r\n--b--\r\n"),
    "nested multipart": (
        MULTIPART,
        b"--b\r\n" + FIELD + b"Content-Type: multipart/mixed; boundary=c\r\n\r\n"
        b"--c\r\n\r\nx\r\n--c--\r\n--b--\r\n",
    ),
    "unknown transfer encoding": (
        MULTIPART,
        b"--b\r\n" + FIELD + b"Content-Transfer-Encoding: rot13\r\n\r\nhttps://r\r\n--b--\r\n",
    ),
    "unknown part charset": (
        MULTIPART,
        b"--b\r\n" + FIELD + b"Content-Type: text/plain; charset=klingon\r\n\r\nr\r\n--b--\r\n",
    ),
    "file field": (
        MULTIPART,
        b'--b\r\nContent-Disposition: form-data; name="resource"; filename="r.txt"\r\n\r\n'
        b"https://r\r\n--b--\r\n",
    ),
    "unknown form charset": ("application/x-www-form-urlencoded; charset=klingon", b"resource=r"),
    "latin-1 form": ("application/x-www-form-urlencoded; charset=latin-1", b"resource=r"),
    "bad percent-encoding": ("application/x-www-form-urlencoded", b"resource=https%3A%2F%2Fr%zz"),
    "trailing percent": ("application/x-www-form-urlencoded", b"resource=https://r%"),
    "not utf-8 once decoded": ("application/x-www-form-urlencoded", b"resource=%ff%fe"),
    "raw bytes not utf-8": ("application/x-www-form-urlencoded", b"resource=\xff"),
}


@pytest.mark.parametrize(("content_type", "body"), BAD_FORMS.values(), ids=BAD_FORMS.keys())
async def test_a_malformed_cloud_shell_form_is_refused(
    emulator: Emulator, session: aiohttp.ClientSession, content_type: str, body: bytes,
    server_errors: list[logging.LogRecord],
) -> None:
    async with session.post(
        emulator.http_url + "/cloudshell/token", data=body,
        headers={"Metadata": "true", "Content-Type": content_type},
    ) as response:
        assert response.status == 400
        refusal = await response.json()
    assert refusal["error"] == "invalid_request"  # Cloud Shell's own shape
    (record,) = await emulator.wait_for_responses(1)
    assert (record.source, record.status) == ("cloud_shell", 400)
    assert emulator.issued == 0


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br"])
async def test_a_corrupt_compressed_body_is_refused_and_the_connection_closed(
    emulator: Emulator, encoding: str, server_errors: list[logging.LogRecord]
) -> None:
    for path, content_type in (
        ("/cloudshell/token", "application/x-www-form-urlencoded"),
        ("/emulator/faults", "application/json"),
    ):
        request = (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nMetadata: true\r\n"
            f"Content-Type: {content_type}\r\nContent-Encoding: {encoding}\r\n"
            "Content-Length: 7\r\n\r\ngarbage"
        ).encode()
        status, _ = await raw(emulator, request)  # the read ends: the emulator closed it
        assert status == 400
    assert emulator.faults == []


async def test_a_well_formed_multipart_form_is_still_read(
    emulator: Emulator, session: aiohttp.ClientSession
) -> None:
    form = aiohttp.FormData()
    form.add_field("resource", "https://r")
    async with session.post(
        emulator.http_url + "/cloudshell/token", data=form(), headers={"Metadata": "true"}
    ) as response:
        assert response.status == 200
    assert emulator.requests[0].form_field("resource") == "https://r"


# -- 3. clearing the log while requests are in flight --------------------------------------------


async def test_clearing_the_log_over_http_does_not_break_requests_in_flight(
    emulator: Emulator, session: aiohttp.ClientSession
) -> None:
    async def get(path: str, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
        async with session.get(emulator.http_url + path, headers=headers) as response:
            return response.status, await response.json()

    async def cloud_shell() -> tuple[int, dict[str, Any]]:
        async with session.post(
            emulator.http_url + "/cloudshell/token", data={"resource": "https://r"},
            headers={"Metadata": "true"},
        ) as response:
            return response.status, await response.json()

    emulator.add_fault(Fault.slow(0.01, source="azure_ml"))  # one in a fault's delay, too
    with emulator.hold():
        in_flight = [
            asyncio.ensure_future(get(IMDS_PATH, {"Metadata": "true"})),
            asyncio.ensure_future(get(
                f"/msi/token?api-version={APP_SERVICE_API_VERSION}&resource=https://r",
                {"X-IDENTITY-HEADER": emulator.secret},
            )),
            asyncio.ensure_future(get(
                f"/azureml/token?api-version={AZURE_ML_API_VERSION}&resource=https://r",
                {"secret": emulator.secret},
            )),
            asyncio.ensure_future(cloud_shell()),
        ]
        await emulator.wait_for_requests(4)
        assert emulator.held == 4
        for _ in range(3):  # and again, concurrently
            deletes = [session.delete(emulator.http_url + "/emulator/requests") for _ in range(3)]
            for response in await asyncio.gather(*deletes):
                assert response.status == 204
                response.release()
        assert emulator.requests == []
    answers = await asyncio.gather(*in_flight)
    assert [status for status, _ in answers] == [200] * 4
    for _, body in answers:
        assert emulator.verify(body["access_token"], audience="https://r")
    assert emulator.issued == 4
    assert emulator.requests == []  # answered after the clear: forgotten, and nothing failed
    assert await imds(session, emulator) == 200
    (record,) = await emulator.wait_for_responses(1)
    assert record.status == 200


# -- 4. a long run keeps the latest requests, tokens and keys -------------------------------------


async def test_the_request_log_and_issued_tokens_are_ring_buffers(
    clock: FakeClock, session: aiohttp.ClientSession
) -> None:
    assert DEFAULT_HISTORY == 10_000
    assert Emulator(clock=clock).history == DEFAULT_HISTORY
    async with Emulator(clock=clock, history=3) as emulator:
        register_emulator(emulator)
        tokens = []
        for index in range(5):
            async with session.get(
                emulator.http_url + IMDS_PATH.replace("https://r", f"https://r{index}"),
                headers={"Metadata": "true"},
            ) as response:
                tokens.append((await response.json())["access_token"])
        assert [r.param("resource") for r in emulator.requests] == ["https://r2", "https://r3", "https://r4"]
        assert emulator.issued_tokens == tokens[2:]
        assert emulator.issued == 5  # every token issued is counted, kept or not
        secrets = emulator.secrets()
        assert all(t in secrets for t in tokens[2:])
        assert not any(t in secrets for t in tokens[:2])
        async with session.get(emulator.http_url + "/emulator/requests") as response:
            assert len(await response.json()) == 3
        with pytest.raises(TimeoutError, match="keeps the latest 3: 2 older requests were let go"):
            await emulator.wait_for_requests(4, timeout=0.01)
        emulator.requests.clear()
        emulator.issued_tokens.clear()
        assert (emulator.requests, emulator.issued) == ([], 0)


async def test_history_none_keeps_everything(
    clock: FakeClock, session: aiohttp.ClientSession
) -> None:
    async with Emulator(clock=clock, history=None) as emulator:
        register_emulator(emulator)
        for _ in range(3):
            assert await imds(session, emulator) == 200
        assert (len(emulator.requests), emulator.issued, len(emulator.issued_tokens)) == (3, 3, 3)


@pytest.mark.parametrize("history", [0, -1, True, 2.5])
def test_history_must_be_a_positive_count(clock: FakeClock, history: Any) -> None:
    with pytest.raises(ValueError, match="history"):
        Emulator(clock=clock, history=history)


async def test_azure_arc_keys_are_bounded_too(
    clock: FakeClock, session: aiohttp.ClientSession
) -> None:
    async with Emulator(clock=clock, history=2) as emulator:
        register_emulator(emulator)
        url = f"{emulator.http_url}/arc/token?api-version={AZURE_ARC_API_VERSION}&resource=https://r"
        paths = []
        for _ in range(3):
            async with session.get(url, headers={"Metadata": "true"}) as response:
                assert response.status == 401
                paths.append(response.headers["WWW-Authenticate"].partition("realm=")[2])
        files, keys = key_files(emulator.arc_key_dir)
        assert files == sorted(os.path.basename(p) for p in paths[1:])  # the oldest one is gone
        assert list(emulator._endpoints.arc_keys) == [keys[os.path.basename(p)] for p in paths[1:]]
        assert paths[0] not in emulator._endpoints.arc_keys.values()
        newest = keys[os.path.basename(paths[-1])]
        async with session.get(
            url, headers={"Metadata": "true", "Authorization": f"Basic {newest}"}
        ) as response:
            assert response.status == 200


def key_files(directory: str) -> tuple[list[str], dict[str, str]]:
    """The key files in ``directory`` (sorted), and each one's key."""
    names = sorted(os.listdir(directory))
    keys = {}
    for name in names:
        with open(os.path.join(directory, name), encoding="utf-8") as handle:
            keys[name] = handle.read()
    return names, keys


async def test_used_up_faults_are_dropped_and_pending_ones_bounded(
    emulator: Emulator, session: aiohttp.ClientSession
) -> None:
    faults = emulator.http_url + "/emulator/faults"
    async with session.post(faults, json={"source": "imds", "status": 503}) as response:
        assert response.status == 201
    assert await imds(session, emulator) == 503
    many = [{"source": "azure_ml", "status": 503}] * MAX_FAULTS
    async with session.post(faults, json=many) as response:
        assert response.status == 201
    assert len(emulator.faults) == MAX_FAULTS  # the used-up fault made room
    async with session.post(faults, json={"source": "azure_ml"}) as response:
        assert response.status == 400
        assert f"at most {MAX_FAULTS}" in (await response.json())["error"]
    async with session.delete(faults) as response:
        assert response.status == 204
    async with session.post(faults, json={"source": "azure_ml"}) as response:
        assert response.status == 201


# -- 5. a foreign Host header (DNS rebinding) or another site's page is refused ------------------

LOOPBACK_HOSTS = [
    "localhost", "LocalHost", "localhost:8080", "127.0.0.1", "127.0.0.1:1", "127.1.2.3",
    "127.255.255.254:65535", "[::1]", "[::1]:8080", "[0:0:0:0:0:0:0:1]",
]
FOREIGN_HOSTS = [
    "evil.example", "evil.example:8080", "127.0.0.1.evil.example", "localhost.evil.example",
    "localhost.", "10.0.0.1", "169.254.169.254", "0.0.0.0", "2130706433", "127.1", "[::2]",  # noqa: S104
    "[::ffff:127.0.0.1]", "[::1", "::1", "localhost:99999", "localhost:http", "localhost:",
    "127.0.0.1:\uff18\uff10",  # full-width digits
]
GUARDED = [
    ("GET", "/emulator/environment/app_service"),
    ("GET", "/emulator/requests"),
    ("DELETE", "/emulator/requests"),
    ("GET", "/emulator/faults"),
    ("POST", "/emulator/faults"),
    ("DELETE", "/emulator/faults"),
    ("GET", "/emulator/jwks"),
    ("GET", "/emulator/ca.pem"),
    ("GET", IMDS_PATH),
    ("POST", "/cloudshell/token"),
    ("GET", "/no/such/route"),
]


@pytest.mark.parametrize("host", FOREIGN_HOSTS)
async def test_a_foreign_host_is_refused_on_every_route(
    emulator: Emulator, session: aiohttp.ClientSession, host: str
) -> None:
    for method, path in GUARDED:
        async with session.request(
            method, emulator.http_url + path, json={"status": 503},
            headers={"Host": host, "Metadata": "true", "X-IDENTITY-HEADER": emulator.secret},
        ) as response:
            assert response.status == 403, (method, path)
            assert emulator.secret not in await response.text()
            assert (await response.json())["error"] == "forbidden"
    assert emulator.requests == []  # refused at the door: not recorded, no fault used up
    assert emulator.faults == []


@pytest.mark.parametrize("host", LOOPBACK_HOSTS)
async def test_loopback_hosts_are_answered(
    emulator: Emulator, session: aiohttp.ClientSession, host: str
) -> None:
    async with session.get(
        emulator.http_url + "/emulator/environment/app_service", headers={"Host": host}
    ) as response:
        assert response.status == 200
        assert await response.json() == emulator.environ(S.APP_SERVICE)
    assert await imds(session, emulator, Host=host) == 200


async def test_a_request_without_a_host_is_refused(emulator: Emulator) -> None:
    for request in (
        b"GET /emulator/environment/app_service HTTP/1.0\r\n\r\n",
        b"GET /emulator/environment/app_service\r\n\r\n",  # HTTP/0.9
    ):
        status, body = await raw(emulator, request)
        assert status == 403
        assert emulator.secret.encode() not in body


async def test_the_https_routes_are_guarded_too(
    emulator: Emulator, session: aiohttp.ClientSession
) -> None:
    context = ssl.create_default_context(cafile=emulator.ca_file)
    for host, status in (("evil.example", 403), ("127.0.0.1", 200)):
        async with session.get(
            emulator.https_url + "/emulator/jwks", headers={"Host": host}, ssl=context
        ) as response:
            assert response.status == status
        async with session.get(
            f"{emulator.https_url}/metadata/identity/oauth2/token"
            f"?api-version={SERVICE_FABRIC_API_VERSION}&resource=https://r",
            headers={"Host": host, "Secret": emulator.secret}, ssl=context,
        ) as response:
            assert response.status == status


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "https://evil.example"},
        {"Origin": "http://127.0.0.1.evil.example"},
        {"Origin": "null"},  # a sandboxed frame, a file:// page
        {"Origin": "127.0.0.1"},
        {"Sec-Fetch-Site": "cross-site"},
    ],
)
async def test_another_sites_page_is_refused(
    emulator: Emulator, session: aiohttp.ClientSession, headers: dict[str, str]
) -> None:
    async with session.post(
        emulator.http_url + "/emulator/faults", json={"status": 503}, headers=headers
    ) as response:
        assert response.status == 403
    assert await imds(session, emulator, **headers) == 403
    assert (emulator.faults, emulator.requests) == ([], [])


async def test_a_loopback_origin_is_answered(
    emulator: Emulator, session: aiohttp.ClientSession
) -> None:
    port = URL(emulator.http_url).port
    for origin in (f"http://127.0.0.1:{port}", "http://localhost:3000", "https://[::1]"):
        async with session.post(
            emulator.http_url + "/emulator/faults", json={"source": "azure_ml"},
            headers={"Origin": origin, "Sec-Fetch-Site": "same-origin"},
        ) as response:
            assert response.status == 201
    assert len(emulator.faults) == 3


# -- 6. IMDS refuses requests a proxy forwarded ---------------------------------------------------


async def test_imds_refuses_x_forwarded_for(
    emulator: Emulator, session: aiohttp.ClientSession
) -> None:
    async with session.get(
        emulator.http_url + IMDS_PATH, headers={"Metadata": "true", "X-Forwarded-For": "10.1.2.3"}
    ) as response:
        assert response.status == 400
        assert response.content_type == "application/json"
        refusal = await response.json()
    assert refusal["error"] == "invalid_request"  # IMDS's shape, as for a missing Metadata
    assert "X-Forwarded-For" in refusal["error_description"]
    (record,) = await emulator.wait_for_responses(1)
    assert (record.source, record.status) == ("imds", 400)
    assert emulator.issued == 0
    assert await imds(session, emulator) == 200


# -- 7. beyond the list: queries, methods, headers, concurrency ----------------------------------

BAD_QUERIES = ["resource=https://r%zz", "resource=https://r%", "resource=%ff%fe", "resource=%c3"]


@pytest.mark.parametrize("query", BAD_QUERIES)
async def test_a_malformed_query_is_refused_in_each_sources_shape(
    emulator: Emulator, session: aiohttp.ClientSession, query: str,
    server_errors: list[logging.LogRecord],
) -> None:
    context = ssl.create_default_context(cafile=emulator.ca_file)
    cases = [
        (emulator.http_url, "/metadata/identity/oauth2/token", IMDS_API_VERSION,
         {"Metadata": "true"}, "error"),
        (emulator.http_url, "/msi/token", APP_SERVICE_API_VERSION,
         {"X-IDENTITY-HEADER": emulator.secret}, "statusCode"),
        (emulator.http_url, "/arc/token", AZURE_ARC_API_VERSION, {"Metadata": "true"}, "error"),
        (emulator.http_url, "/azureml/token", AZURE_ML_API_VERSION,
         {"secret": emulator.secret}, "error"),
        (emulator.https_url, "/metadata/identity/oauth2/token", SERVICE_FABRIC_API_VERSION,
         {"Secret": emulator.secret}, "error"),
    ]
    for base, path, version, headers, key in cases:
        url = URL(f"{base}{path}?api-version={version}&{query}", encoded=True)
        async with session.get(url, headers=headers, ssl=context) as response:
            assert response.status == 400, path
            assert key in await response.json()
    assert [r.status for r in await emulator.wait_for_responses(len(cases))] == [400] * len(cases)
    assert emulator.issued == 0
    assert not os.listdir(emulator.arc_key_dir)  # refused before Arc wrote a key


async def test_a_malformed_workload_identity_form_is_refused_in_entras_shape(
    emulator: Emulator, session: aiohttp.ClientSession
) -> None:
    context = ssl.create_default_context(cafile=emulator.ca_file)
    async with session.post(
        f"{emulator.https_url}/{emulator.tenant_id}/oauth2/v2.0/token",
        data=b"grant_type=client_credentials&scope=%zz",
        headers={"Content-Type": "application/x-www-form-urlencoded"}, ssl=context,
    ) as response:
        assert response.status == 400
        refusal = await response.json()
    assert refusal["error"] == "invalid_request"
    assert {"timestamp", "trace_id", "correlation_id"} <= set(refusal)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("PUT", IMDS_PATH), ("DELETE", IMDS_PATH), ("POST", IMDS_PATH), ("OPTIONS", IMDS_PATH),
        ("GET", "/cloudshell/token"), ("PATCH", "/emulator/faults"), ("PUT", "/emulator/requests"),
        ("POST", "/emulator/environment/imds"), ("OPTIONS", "/emulator/faults"),
    ],
)
async def test_wrong_methods_get_405(
    emulator: Emulator, session: aiohttp.ClientSession, method: str, path: str
) -> None:
    async with session.request(
        method, emulator.http_url + path, headers={"Metadata": "true"}
    ) as response:
        assert response.status == 405
        assert "Access-Control-Allow-Origin" not in response.headers  # no CORS
    assert emulator.requests == []


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /emulator/faults HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n",
        b"GET /emulator/faults HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        + b"".join(b"X-%d: a\r\n" % i for i in range(5000)) + b"\r\n",
        b"GET " + IMDS_PATH.encode() + b"&x=" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        b"GET /emulator/faults HTTP/1.1\r\nHost: 127.0.0.1\r\nHost: evil.example\r\n\r\n",
        b"GET /metadata/identity/oauth2/token?resource=\xff HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        b"POST /emulator/faults HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2\r\n"
        b"Content-Length: 3\r\n\r\n{}",
        b"POST /cloudshell/token HTTP/1.1\r\nHost: 127.0.0.1\r\nMetadata: true\r\n"
        b"Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
        b"BREW /emulator/faults HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    ],
    ids=["huge-header", "many-headers", "huge-query", "two-hosts", "raw-byte-in-url",
         "two-content-lengths", "bad-chunk", "unknown-method"],
)
async def test_malformed_http_gets_a_4xx(emulator: Emulator, request_bytes: bytes) -> None:
    status, _ = await raw(emulator, request_bytes)
    assert 400 <= status < 500
    assert emulator.requests == []
    assert emulator.faults == []


async def test_concurrent_admin_calls_never_fail(
    emulator: Emulator, session: aiohttp.ClientSession, server_errors: list[logging.LogRecord]
) -> None:
    base = emulator.http_url

    async def call(index: int) -> int:
        kind = index % 6
        if kind == 0:
            method, path, body = "POST", "/emulator/faults", [{"source": "azure_ml"}] * 3
        elif kind == 1:
            method, path, body = "DELETE", "/emulator/faults", None
        elif kind == 2:
            method, path, body = "GET", "/emulator/faults", None
        elif kind == 3:
            method, path, body = "DELETE", "/emulator/requests", None
        elif kind == 4:
            method, path, body = "GET", "/emulator/requests", None
        else:
            return await imds(session, emulator)
        async with session.request(method, base + path, json=body) as response:
            if response.status == 200:
                assert isinstance(await response.json(), list)
            return response.status

    statuses = await asyncio.gather(*(call(i) for i in range(120)))
    assert set(statuses) <= {200, 201, 204}
    assert len(emulator.faults) % 3 == 0  # each post added all of its faults, or none
    async with session.get(base + "/emulator/faults") as response:
        assert len(await response.json()) == len(emulator.faults)
