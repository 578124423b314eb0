"""The shared token cache in one process: credentials sharing a directory against the emulator,
the files' modes, and each untrustworthy directory or entry handled (ignored, replaced, or the
directory refused with a warning and the in-process cache used alone). Processes: see
test_shared_cache_processes.py."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import stat
import sys
from pathlib import Path
from typing import Any

import filelock
import pytest
from azure.core.exceptions import ClientAuthenticationError
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from mi_credential import ManagedIdentityCredential, TokenRequestError
from mi_credential._models import ParsedToken
from mi_credential._shared_cache import (
    ENVIRONMENT_VARIABLE,
    default_directory,
    encode_entry,
)
from mi_credential.emulator import Emulator, Fault

from .conftest import CredentialFactory, FakeClock

SCOPE = "https://vault.azure.net/.default"
OTHER_SCOPE = "https://storage.azure.com/.default"
posix_only = pytest.mark.skipif(sys.platform == "win32", reason="POSIX modes and owners")
needs_root = pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0,
    reason="giving a file to another uid needs root",
)


def entries(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.json"))


def requests(emulator: Emulator) -> int:
    return len(emulator.requests_for("imds"))


async def test_credentials_sharing_a_directory_make_one_request(
    make_credential: CredentialFactory, emulator: Emulator, tmp_path: Path
) -> None:
    directory = tmp_path / "created" / "cache"  # missing: created 0700
    first = make_credential("imds", shared_cache=str(directory))
    second = make_credential("imds", shared_cache=directory)  # a PathLike does as well
    token = await first.get_token(SCOPE)
    assert (await second.get_token(SCOPE)).token == token.token
    assert requests(emulator) == 1
    assert f"shared_cache={str(directory)!r}" in repr(first)
    if sys.platform != "win32":
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700
        (entry,) = entries(directory)
        assert stat.S_IMODE(entry.stat().st_mode) == 0o600
        assert stat.S_IMODE(entry.with_suffix(".lock").stat().st_mode) == 0o600
    # What an entry holds: the token, its type, expiry and refresh time; nothing else.
    (entry,) = entries(directory)
    stored = json.loads(entry.read_text())
    assert set(stored) == {"format", "access_token", "token_type", "expires_on", "refresh_on"}
    assert stored["access_token"] == token.token and stored["expires_on"] == token.expires_on


async def test_the_environment_variable_turns_it_on_and_off(
    make_credential: CredentialFactory, emulator: Emulator, tmp_path: Path
) -> None:
    environ = emulator.environ("imds")
    on = {**environ, ENVIRONMENT_VARIABLE: str(tmp_path / "from-env")}
    first, second = (make_credential("imds", environ=on) for _ in range(2))
    await first.get_token(SCOPE)
    await second.get_token(SCOPE)
    assert requests(emulator) == 1 and len(entries(tmp_path / "from-env")) == 1

    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    default = {**environ, ENVIRONMENT_VARIABLE: "true", "XDG_RUNTIME_DIR": str(runtime)}
    assert "mi-credential" in repr(make_credential("imds", environ=default))
    assert (runtime / "mi-credential").is_dir()

    for value in ("0", "false", "", "off"):
        credential = make_credential("imds", environ={**environ, ENVIRONMENT_VARIABLE: value})
        assert "shared_cache" not in repr(credential)
    # The keyword wins over the environment.
    assert "shared_cache" not in repr(make_credential("imds", environ=on, shared_cache=False))


@posix_only
def test_the_default_directory_is_per_user() -> None:
    assert default_directory({"XDG_RUNTIME_DIR": "/run/user/1000"}) == (
        "/run/user/1000/mi-credential"
    )
    fallback = default_directory({})
    assert fallback.endswith(f"mi-credential-{os.getuid()}")
    assert default_directory({"XDG_RUNTIME_DIR": "relative"}) == fallback


@pytest.mark.parametrize("setting", [3, "", "   ", b"/tmp", ["/tmp"]])
def test_a_setting_that_is_no_path_is_a_value_error(emulator: Emulator, setting: Any) -> None:
    with pytest.raises(ValueError, match="shared_cache must be"):
        ManagedIdentityCredential(environ=emulator.environ("imds"), shared_cache=setting)


def test_without_filelock_the_error_names_the_extra(
    emulator: Emulator,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setitem(sys.modules, "filelock", None)  # import filelock raises ImportError
    environ = emulator.environ("imds")
    with pytest.raises(ImportError, match=r"mi-credential\[shared-cache\]"):
        ManagedIdentityCredential(environ=environ, shared_cache=str(tmp_path))
    # Asked for by the environment, it is a warning: the deployment keeps working.
    credential = ManagedIdentityCredential(
        environ={**environ, ENVIRONMENT_VARIABLE: str(tmp_path)}
    )
    assert "shared_cache" not in repr(credential)
    assert "mi-credential[shared-cache]" in caplog.text


def valid_entry(clock: FakeClock) -> bytes:
    now = int(clock())
    return encode_entry(ParsedToken("planted-token", now + 3600, now + 1800))


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b"\x00\xff garbage", id="corrupt"),
        pytest.param(b'{"format":1,"access_token":"abc","token_type":"Bea', id="truncated"),
        pytest.param(b"", id="empty"),
        pytest.param(b'["format", 1]', id="not-an-object"),
        pytest.param(b'{"format":2,"token":"abc","expires":1}', id="foreign-format"),
        pytest.param(b"[" * 100000, id="deeply-nested"),
        pytest.param(b" " * (70 * 1024), id="oversized"),
    ],
)
async def test_an_unreadable_entry_is_ignored_and_replaced(
    make_credential: CredentialFactory, emulator: Emulator, tmp_path: Path, content: bytes
) -> None:
    await make_credential("imds", shared_cache=str(tmp_path)).get_token(SCOPE)
    (entry,) = entries(tmp_path)
    entry.write_bytes(content)
    token = await make_credential("imds", shared_cache=str(tmp_path)).get_token(SCOPE)
    assert requests(emulator) == 2  # ignored: the second credential asked the endpoint
    assert json.loads(entry.read_text())["access_token"] == token.token  # and replaced it
    assert (await make_credential("imds", shared_cache=str(tmp_path)).get_token(SCOPE)).token == (
        token.token
    )
    assert requests(emulator) == 2


@pytest.mark.parametrize(
    "change",
    [
        pytest.param({"expires_on": -10, "refresh_on": -20}, id="expired"),
        pytest.param({"expires_on": 10**12, "refresh_on": 10**11}, id="implausible-lifetime"),
        pytest.param({"refresh_on": 10**12}, id="refresh-after-expiry"),
        pytest.param({"access_token": "two words"}, id="token-with-a-space"),
        pytest.param({"access_token": "line\r\nbreak"}, id="token-with-crlf"),
        pytest.param({"access_token": ""}, id="empty-token"),
        pytest.param({"token_type": "Bearer\r\nX-Injected: 1"}, id="token-type-with-crlf"),
        pytest.param({"expires_on": "9999999999"}, id="expiry-as-text"),
        pytest.param({"expires_on": True}, id="expiry-as-boolean"),
    ],
)
async def test_an_implausible_entry_is_ignored(
    make_credential: CredentialFactory,
    emulator: Emulator,
    clock: FakeClock,
    tmp_path: Path,
    change: dict[str, Any],
) -> None:
    await make_credential("imds", shared_cache=str(tmp_path)).get_token(SCOPE)
    (entry,) = entries(tmp_path)
    planted = json.loads(valid_entry(clock))
    for key, value in change.items():  # times are relative to now, but text or booleans
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) < 10**6:
            value += int(clock())
        planted[key] = value
    entry.write_text(json.dumps(planted))
    token = await make_credential("imds", shared_cache=str(tmp_path)).get_token(SCOPE)
    assert token.token != planted["access_token"] and requests(emulator) == 2


async def test_a_valid_planted_entry_is_read(
    make_credential: CredentialFactory, emulator: Emulator, clock: FakeClock, tmp_path: Path
) -> None:
    """The control for the tests above: the same entry, unchanged, is used."""
    await make_credential("imds", shared_cache=str(tmp_path)).get_token(SCOPE)
    (entry,) = entries(tmp_path)
    entry.write_bytes(valid_entry(clock))
    token = await make_credential("imds", shared_cache=str(tmp_path)).get_token(SCOPE)
    assert token.token == "planted-token" and requests(emulator) == 1


@posix_only
async def test_a_symlinked_entry_is_not_followed_and_is_replaced(
    make_credential: CredentialFactory, emulator: Emulator, clock: FakeClock, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    await make_credential("imds", shared_cache=str(cache)).get_token(SCOPE)
    (entry,) = entries(cache)
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_bytes(valid_entry(clock))
    entry.unlink()
    entry.symlink_to(elsewhere)
    token = await make_credential("imds", shared_cache=str(cache)).get_token(SCOPE)
    assert token.token != "planted-token" and requests(emulator) == 2
    assert not entry.is_symlink() and json.loads(entry.read_text())["access_token"] == token.token
    assert json.loads(elsewhere.read_text())["access_token"] == "planted-token"  # untouched


@posix_only
@pytest.mark.parametrize("mode", [0o777, 0o770, 0o722], ids=oct)
async def test_a_directory_others_can_write_to_is_refused(
    make_credential: CredentialFactory,
    emulator: Emulator,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    mode: int,
) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    cache.chmod(mode)
    first, second = (make_credential("imds", shared_cache=str(cache)) for _ in range(2))
    await first.get_token(SCOPE)
    await second.get_token(SCOPE)
    assert requests(emulator) == 2  # in-process caches only
    assert list(cache.iterdir()) == []  # nothing shared through it
    assert f"writable by its group or others (mode {mode:o})" in caplog.text
    assert "shared_cache" not in repr(first)


@posix_only
async def test_a_symlinked_directory_is_refused(
    make_credential: CredentialFactory,
    emulator: Emulator,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    link = tmp_path / "link"
    link.symlink_to(real)
    first, second = (make_credential("imds", shared_cache=str(link)) for _ in range(2))
    await first.get_token(SCOPE)
    await second.get_token(SCOPE)
    assert requests(emulator) == 2 and list(real.iterdir()) == []
    assert "is a symbolic link" in caplog.text


async def test_a_file_in_place_of_the_directory_is_refused(
    make_credential: CredentialFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "cache").write_text("")
    credential = make_credential("imds", shared_cache=str(tmp_path / "cache"))
    assert "shared_cache" not in repr(credential)
    assert "is not a directory" in caplog.text
    await credential.get_token(SCOPE)


@posix_only
@needs_root
async def test_a_directory_of_another_user_is_refused(
    make_credential: CredentialFactory,
    emulator: Emulator,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700)
    os.chown(cache, 4242, 4242)
    first, second = (make_credential("imds", shared_cache=str(cache)) for _ in range(2))
    await first.get_token(SCOPE)
    await second.get_token(SCOPE)
    assert requests(emulator) == 2 and list(cache.iterdir()) == []
    assert f"belongs to uid 4242, not to this user (uid {os.getuid()})" in caplog.text


@posix_only
@needs_root
async def test_an_entry_of_another_user_is_ignored(
    make_credential: CredentialFactory, emulator: Emulator, clock: FakeClock, tmp_path: Path
) -> None:
    await make_credential("imds", shared_cache=str(tmp_path)).get_token(SCOPE)
    (entry,) = entries(tmp_path)
    entry.write_bytes(valid_entry(clock))
    os.chown(entry, 4242, 4242)
    token = await make_credential("imds", shared_cache=str(tmp_path)).get_token(SCOPE)
    assert token.token != "planted-token" and requests(emulator) == 2
    assert entry.stat().st_uid == os.getuid()  # replaced by this user's


async def test_a_store_that_cannot_be_used_does_not_fail_the_caller(
    make_credential: CredentialFactory,
    emulator: Emulator,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    cache = tmp_path / "cache"
    credential = make_credential("imds", shared_cache=str(cache))
    cache.rmdir()
    cache.write_text("")  # a file where the directory was, after the credential checked it
    assert (await credential.get_token(SCOPE)).token
    assert (await credential.get_token(OTHER_SCOPE)).token
    assert requests(emulator) == 2 and cache.read_text() == ""
    shared = [r for r in caplog.records if r.getMessage().startswith("Shared token cache")]
    assert [r.levelno for r in shared].count(logging.WARNING) == 1  # once, then DEBUG


async def test_claims_tokens_are_never_written(
    make_credential: CredentialFactory, emulator: Emulator, tmp_path: Path
) -> None:
    credential = make_credential("imds", shared_cache=str(tmp_path))
    first = await credential.get_token(SCOPE)
    (entry,) = entries(tmp_path)
    before = entry.read_bytes()
    challenged = await credential.get_token(SCOPE, claims='{"access_token":{"nbf":{"value":"1"}}}')
    assert challenged.token != first.token
    assert entry.read_bytes() == before and entries(tmp_path) == [entry]


async def test_two_identities_never_share_an_entry(
    make_credential: CredentialFactory, emulator: Emulator, tmp_path: Path
) -> None:
    client_id = emulator.user_identities[0].client_id
    system = make_credential("imds", shared_cache=str(tmp_path))
    user = make_credential("imds", shared_cache=str(tmp_path), client_id=client_id)
    assert (await system.get_token(SCOPE)).token != (await user.get_token(SCOPE)).token
    await system.get_token(OTHER_SCOPE)
    assert requests(emulator) == 3 and len(entries(tmp_path)) == 3


async def test_a_source_of_its_own_secret_does_not_share(
    emulator: Emulator, clock: FakeClock, tmp_path: Path
) -> None:
    """Two App Service apps of one user: each endpoint secret keys its own entries."""
    options = emulator.client_options("app_service")
    other = {**options["environ"], "IDENTITY_HEADER": "another-app's-secret"}
    shared = {"shared_cache": str(tmp_path), "clock": clock}
    async with ManagedIdentityCredential(**options, **shared) as mine:
        await mine.get_token(SCOPE)
    async with ManagedIdentityCredential(**{**options, "environ": other}, **shared) as theirs:
        with pytest.raises(ClientAuthenticationError):  # the emulator refuses the secret
            await theirs.get_token(SCOPE)
    assert len(entries(tmp_path)) == 1


async def test_telemetry_says_where_the_token_came_from(
    emulator: Emulator, clock: FakeClock, tmp_path: Path
) -> None:
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    options = {
        **emulator.client_options("imds"),
        "shared_cache": str(tmp_path),
        "clock": clock,
        "sleep": clock.sleep,
        "tracer_provider": tracer_provider,
        "meter_provider": meter_provider,
    }
    async with ManagedIdentityCredential(**options) as first, ManagedIdentityCredential(
        **options
    ) as second, ManagedIdentityCredential(**options) as third:
        await first.get_token(SCOPE)
        await second.get_token(SCOPE)  # from the file
        with emulator.hold():  # the third refreshes; the first waits for it
            clock.advance(24 * 3600)
            refreshing = asyncio.ensure_future(third.get_token(SCOPE))
            await emulator.wait_for_requests(2)
            waiting = asyncio.ensure_future(first.get_token(SCOPE))
            for _ in range(50):  # the first polls the held lock
                await asyncio.sleep(0)
        assert (await refreshing).token == (await waiting).token
    spans = [s for s in exporter.get_finished_spans() if s.name.startswith("Managed")]
    found = [
        (s.attributes["mi_credential.cache.result"], s.attributes["mi_credential.token.origin"])
        for s in spans
    ]
    assert sorted(found) == sorted(
        [
            ("miss", "endpoint"),
            ("shared", "shared_cache"),
            ("miss", "endpoint"),
            ("shared", "shared_refresh"),
        ]
    )
    data = reader.get_metrics_data()
    points: dict[str, list[Any]] = {}
    for resource_metrics in data.resource_metrics:
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                points.setdefault(metric.name, []).extend(metric.data.data_points)
    by_origin = {
        p.attributes["mi_credential.token.origin"]: p.value
        for p in points["mi_credential.token.refreshes"]
    }
    assert by_origin == {"endpoint": 2, "shared_cache": 1, "shared_refresh": 1}
    (waits,) = points["mi_credential.shared_cache.lock_waits"]
    assert waits.value == 1
    recorded = [repr(dict(s.attributes or {})) + repr(s.events) for s in exporter.get_finished_spans()]
    recorded += [repr(dict(p.attributes)) for series in points.values() for p in series]
    for secret in emulator.secrets():
        assert not any(secret in text for text in recorded)
    tracer_provider.shutdown()
    meter_provider.shutdown()


async def test_the_timeout_bounds_the_wait_and_the_requests_together(
    make_credential: CredentialFactory, emulator: Emulator, clock: FakeClock, tmp_path: Path
) -> None:
    """A hung holder of the lock and a failing endpoint: the caller still has its answer
    within ``timeout``, the wait for the holder included."""
    await make_credential("imds", shared_cache=str(tmp_path)).get_token(SCOPE)
    (entry,) = entries(tmp_path)
    entry.unlink()
    emulator.add_fault(Fault.status_code(503, times=None))
    holder = filelock.FileLock(str(entry.with_suffix(".lock")), thread_local=False)
    credential = make_credential("imds", shared_cache=str(tmp_path), timeout=10)
    with holder.acquire(timeout=0):
        start = clock()
        with pytest.raises(TokenRequestError):
            await credential.get_token(SCOPE)
    assert 5 <= clock() - start <= 10.5  # half waiting for the holder, the rest asking
    assert requests(emulator) > 1
