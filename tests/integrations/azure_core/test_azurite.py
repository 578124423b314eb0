"""End to end with real Azure SDK clients: Azurite (the Azure Storage emulator) over HTTPS with
OAuth checks every token's audience, issuer and lifetime; tokens come from the managed identity
emulator through ManagedIdentityCredential."""

from __future__ import annotations

import asyncio
import io
import types
import uuid
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from typing import Any

import azure.core.pipeline.policies._authentication as azure_core_authentication
import pytest
from azure.core.exceptions import ClientAuthenticationError
from azure.storage.blob._generated.aio import AzureBlobStorage
from azure.storage.blob.aio import BlobServiceClient

from mi_credential import ManagedIdentityCredential
from mi_credential.emulator import Emulator, Fault
from mi_credential_azure_core import BearerTokenPolicy

from ._sdk import GeneratedStyleClient
from .conftest import STORAGE_SCOPE, Azurite

SOURCE = "app_service"
X_MS_VERSION = "2025-01-05"


def token_requests(emulator: Emulator) -> int:
    return len(emulator.requests_for(SOURCE))


def blob_service(azurite: Azurite, credential: Any, **kwargs: Any) -> BlobServiceClient:
    return BlobServiceClient(
        azurite.account_url, credential=credential, connection_verify=azurite.ca_file, **kwargs
    )


class BlobRest:
    """The Blob REST API through a client built as generated Azure SDK clients are, with the
    policy under test as its ``authentication_policy``."""

    def __init__(self, azurite: Azurite, policy: Any, **kwargs: Any) -> None:
        self.client = GeneratedStyleClient(
            azurite.account_url,
            authentication_policy=policy,
            connection_verify=azurite.ca_file,
            retry_total=0,
            **kwargs,
        )

    async def send(self, method: str, path: str, **kwargs: Any) -> Any:
        headers = {"x-ms-version": X_MS_VERSION, **kwargs.pop("headers", {})}
        return await self.client.send(method, path, headers=headers, **kwargs)

    async def create_container(self, name: str) -> Any:
        return await self.send("PUT", f"{name}?restype=container")

    async def upload(self, container: str, blob: str, data: bytes) -> Any:
        return await self.send(
            "PUT", f"{container}/{blob}", headers={"x-ms-blob-type": "BlockBlob"}, content=data
        )

    async def list_blobs(self, container: str) -> list[str]:
        response = await self.send("GET", f"{container}?restype=container&comp=list")
        response.raise_for_status()
        root = ET.fromstring(response.content)  # noqa: S314 - Azurite on loopback
        return [element.text or "" for element in root.iter("Name")]

    async def download(self, container: str, blob: str) -> Any:
        return await self.send("GET", f"{container}/{blob}", stream=True)

    async def close(self) -> None:
        await self.client.close()


@pytest.fixture
async def credential(make_credential: Any) -> ManagedIdentityCredential:
    credential: ManagedIdentityCredential = make_credential(SOURCE)
    return credential


@pytest.fixture
async def rest_clients(azurite: Azurite) -> AsyncIterator[list[BlobRest]]:
    clients: list[BlobRest] = []
    yield clients
    for client in clients:
        await client.close()


def container_name() -> str:
    return f"c{uuid.uuid4().hex[:20]}"


# -- the round trip ----------------------------------------------------------------------------


async def test_round_trip_with_the_credential_as_credential(
    azurite: Azurite, credential: ManagedIdentityCredential, emulator: Emulator
) -> None:
    name = container_name()
    async with blob_service(azurite, credential) as service:
        container = await service.create_container(name)
        await container.upload_blob("greeting.txt", b"hello from a managed identity")
        names = [blob.name async for blob in container.list_blobs()]
        downloader = await container.download_blob("greeting.txt")
        data = await downloader.readall()
    assert names == ["greeting.txt"]
    assert data == b"hello from a managed identity"
    # Every request was authorized with one token, issued for storage by the emulator.
    assert token_requests(emulator) == 1
    claims = emulator.verify(emulator.issued_tokens[0], audience="https://storage.azure.com")
    assert claims["iss"].startswith("https://sts.windows.net/")


async def test_round_trip_through_the_policy(
    azurite: Azurite,
    credential: ManagedIdentityCredential,
    emulator: Emulator,
    rest_clients: list[BlobRest],
) -> None:
    rest = BlobRest(azurite, BearerTokenPolicy(credential, STORAGE_SCOPE))
    rest_clients.append(rest)
    name = container_name()
    assert (await rest.create_container(name)).status_code == 201
    assert (await rest.upload(name, "data.bin", b"\x00\x01payload")).status_code == 201
    assert await rest.list_blobs(name) == ["data.bin"]
    download = await rest.download(name, "data.bin")
    assert download.status_code == 200
    assert download.content == b"\x00\x01payload"
    assert token_requests(emulator) == 1
    emulator.verify(emulator.issued_tokens[0], audience="https://storage.azure.com")


async def test_round_trip_through_the_authentication_policy_keyword(
    azurite: Azurite, credential: ManagedIdentityCredential, emulator: Emulator
) -> None:
    """azure-storage-blob's generated client layer takes ``authentication_policy=``, as
    generated Azure SDK clients do: its own operations, with our policy in azure-core's slot."""
    name = container_name()
    container_url = f"{azurite.account_url}/{name}"
    blob_url = f"{container_url}/generated.txt"

    def generated(url: str) -> AzureBlobStorage:
        return AzureBlobStorage(
            url,
            X_MS_VERSION,
            base_url=url,
            authentication_policy=BearerTokenPolicy(credential, STORAGE_SCOPE),
            connection_verify=azurite.ca_file,
        )

    async with generated(container_url) as container, generated(blob_url) as blob:
        await container.container.create()
        await blob.block_blob.upload(content_length=5, body=io.BytesIO(b"hello"))
        listing = await container.container.list_blob_flat_segment()
        stream = await blob.blob.download()
        data = b"".join([chunk async for chunk in stream])
    assert [item.name.content for item in listing.segment.blob_items] == ["generated.txt"]
    assert data == b"hello"
    assert token_requests(emulator) == 1


async def test_the_storage_client_reads_what_the_policy_wrote(
    azurite: Azurite,
    credential: ManagedIdentityCredential,
    emulator: Emulator,
    rest_clients: list[BlobRest],
) -> None:
    """Both ways share the credential's one token: the SDK client sees the blob the pipeline
    client wrote, and the emulator issued a single token for both."""
    rest = BlobRest(azurite, BearerTokenPolicy(credential, STORAGE_SCOPE))
    rest_clients.append(rest)
    name = container_name()
    await rest.create_container(name)
    await rest.upload(name, "shared.txt", b"written through the policy")
    async with blob_service(azurite, credential) as service:
        downloader = await service.get_blob_client(name, "shared.txt").download_blob()
        assert await downloader.readall() == b"written through the policy"
    assert token_requests(emulator) == 1


# -- Azurite really checks the token -------------------------------------------------------------


async def test_a_token_for_another_audience_is_refused_by_the_sdk_client(
    azurite: Azurite, credential: ManagedIdentityCredential, emulator: Emulator
) -> None:
    async with blob_service(azurite, credential, audience="https://vault.azure.net") as service:
        with pytest.raises(ClientAuthenticationError) as caught:
            await service.create_container(container_name())
    assert caught.value.status_code == 403
    assert caught.value.error_code == "AuthenticationFailed"  # type: ignore[attr-defined]
    assert "Invalid token audience" in str(caught.value)
    emulator.verify(emulator.issued_tokens[0], audience="https://vault.azure.net")


async def test_a_token_for_another_audience_is_refused_through_the_policy(
    azurite: Azurite,
    credential: ManagedIdentityCredential,
    emulator: Emulator,
    rest_clients: list[BlobRest],
) -> None:
    rest = BlobRest(azurite, BearerTokenPolicy(credential, "https://vault.azure.net/.default"))
    rest_clients.append(rest)
    response = await rest.create_container(container_name())
    assert response.status_code == 403
    assert response.headers["x-ms-error-code"] == "AuthenticationFailed"
    assert b"Invalid token audience" in response.content
    assert token_requests(emulator) == 1


async def test_a_request_without_a_token_is_not_authorized(
    azurite: Azurite, rest_clients: list[BlobRest]
) -> None:
    """The control for the tests above: Azurite refuses anonymous writes."""
    rest = BlobRest(azurite, None)
    rest_clients.append(rest)
    response = await rest.create_container(container_name())
    assert response.status_code == 403
    assert response.headers["x-ms-error-code"] == "AuthorizationFailure"


# -- refresh time ------------------------------------------------------------------------------

CLIENTS = 10
#: Moves the clock from its start to past the first token's refresh time (half its 24 h life) by
#: more than azure-core's refresh jitter (60 s), while staying behind real time for Azurite.
TO_REFRESH_TIME = 12 * 3600 + 120


class CountingCredential:
    """Forwards to the real credential and counts the calls an authentication policy makes."""

    def __init__(self, credential: ManagedIdentityCredential) -> None:
        self.inner = credential
        self.calls = 0

    async def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        self.calls += 1
        return await self.inner.get_token(*scopes, **kwargs)

    async def get_token_info(self, *scopes: str, options: Any = None) -> Any:
        self.calls += 1
        return await self.inner.get_token_info(*scopes, options=options)

    async def close(self) -> None:
        await self.inner.close()

    async def __aenter__(self) -> CountingCredential:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        return None


async def test_ten_clients_with_the_policy_make_one_token_request_at_refresh_time(
    azurite: Azurite,
    credential: ManagedIdentityCredential,
    emulator: Emulator,
    clock: Any,
    rest_clients: list[BlobRest],
) -> None:
    clients = [BlobRest(azurite, BearerTokenPolicy(credential, STORAGE_SCOPE)) for _ in range(10)]
    rest_clients.extend(clients)
    name = container_name()
    assert (await clients[0].create_container(name)).status_code == 201
    for client in clients:
        assert (await client.send("GET", f"{name}?restype=container")).status_code == 200
    assert token_requests(emulator) == 1

    clock.advance(TO_REFRESH_TIME)
    responses = await asyncio.gather(
        *(client.send("GET", f"{name}?restype=container") for client in clients)
    )
    assert [r.status_code for r in responses] == [200] * CLIENTS
    await credential._cache.settle()  # the background refresh
    responses = await asyncio.gather(
        *(client.send("GET", f"{name}?restype=container") for client in clients)
    )
    assert [r.status_code for r in responses] == [200] * CLIENTS
    # One upstream request for ten clients at refresh time, and the refreshed token is the one
    # the credential now serves to all of them.
    assert token_requests(emulator) == 2
    info = await credential.get_token_info(STORAGE_SCOPE)
    assert info.token == emulator.issued_tokens[1]
    assert info.refresh_on is not None and info.refresh_on > clock()


async def test_ten_clients_with_azure_cores_policy_on_the_same_credential(
    azurite: Azurite,
    credential: ManagedIdentityCredential,
    emulator: Emulator,
    clock: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The comparison, measured: ten real storage SDK clients (``credential=``: azure-core's
    policy, one token copy per client). At refresh time each client refreshes its own copy, so
    the credential is asked ten times; the credential coalesces them into one upstream
    request. A credential that does not coalesce (azure-identity's) sends the ten upstream:
    ``benchmarks/bench_azure_core.py`` measures that side by side."""
    # azure-core's policy reads time.time() itself: it must see the test's clock.
    monkeypatch.setattr(azure_core_authentication, "time", types.SimpleNamespace(time=clock))
    counting = CountingCredential(credential)
    services = [blob_service(azurite, counting) for _ in range(CLIENTS)]
    try:
        name = container_name()
        await services[0].create_container(name)
        for service in services:
            await service.get_container_client(name).get_container_properties()
        assert token_requests(emulator) == 1
        assert counting.calls == CLIENTS  # each client fetched its own copy once

        counting.calls = 0
        clock.advance(TO_REFRESH_TIME)
        await asyncio.gather(
            *(s.get_container_client(name).get_container_properties() for s in services)
        )
        await emulator.wait_for_responses(2, source=SOURCE)  # the background refresh
        assert counting.calls == CLIENTS  # ten refreshes of ten copies
        assert token_requests(emulator) == 2  # one upstream: the credential coalesced them
    finally:
        for service in services:
            await service.close()


@pytest.mark.parametrize("way", ["credential", "policy"])
async def test_a_failing_endpoint_in_the_refresh_window_fails_no_sdk_request(
    way: str,
    azurite: Azurite,
    make_credential: Any,
    emulator: Emulator,
    clock: Any,
    rest_clients: list[BlobRest],
    caplog: pytest.LogCaptureFixture,
) -> None:
    credential = make_credential(SOURCE, timeout=5)
    name = container_name()

    if way == "credential":
        service = blob_service(azurite, credential)
        container = service.get_container_client(name)

        async def write(blob: str) -> None:
            await container.upload_blob(blob, b"data")

        async def close() -> None:
            await service.close()

        await container.create_container()
    else:
        rest = BlobRest(azurite, BearerTokenPolicy(credential, STORAGE_SCOPE))
        rest_clients.append(rest)

        async def write(blob: str) -> None:
            (await rest.upload(name, blob, b"data")).raise_for_status()

        async def close() -> None:
            return None

        (await rest.create_container(name)).raise_for_status()

    try:
        await write("before.txt")
        emulator.add_fault(Fault.status_code(503, source=SOURCE, times=None))
        clock.advance(TO_REFRESH_TIME)
        for index in range(5):
            await write(f"during-{index}.txt")
        await credential._cache.settle()  # the background refresh, its retries included
    finally:
        await close()
    failed = [r for r in emulator.requests_for(SOURCE)[1:] if r.status == 503]
    assert failed, "the background refresh must have been attempted and failed"
    assert any(
        "Background refresh" in record.getMessage() and record.levelname == "WARNING"
        for record in caplog.records
    )
    # The token written with is still the first one, served while valid.
    assert (await credential.get_token_info(STORAGE_SCOPE)).token == emulator.issued_tokens[0]
    assert emulator.issued == 1
