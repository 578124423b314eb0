"""What the README says of azure-storage-blob and BearerTokenPolicy, checked against the
installed SDK and Azurite: the blob clients build their own pipeline, so an
``authentication_policy=`` is never called (the credential, as ``credential=``, is the way)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from azure.core.exceptions import HttpResponseError
from azure.storage.blob.aio import BlobServiceClient

from mi_credential import ManagedIdentityCredential
from mi_credential_azure_core import BearerTokenPolicy

from .conftest import STORAGE_SCOPE, Azurite


class CountingPolicy(BearerTokenPolicy[Any, Any]):
    """The policy, counting the requests it is asked to authorize."""

    calls = 0

    async def on_request(self, request: Any) -> None:
        self.calls += 1
        await super().on_request(request)


@pytest.fixture
async def credential(make_credential: Any) -> ManagedIdentityCredential:
    credential: ManagedIdentityCredential = make_credential("app_service")
    return credential


def container_name() -> str:
    return f"c{uuid.uuid4().hex[:20]}"


async def test_blob_clients_ignore_an_authentication_policy(
    azurite: Azurite, credential: ManagedIdentityCredential
) -> None:
    policy = CountingPolicy(credential, STORAGE_SCOPE)
    async with BlobServiceClient(
        azurite.account_url,
        credential=credential,
        authentication_policy=policy,
        connection_verify=azurite.ca_file,
    ) as client:
        await client.create_container(container_name())  # signed from credential=
    assert policy.calls == 0


async def test_without_a_credential_the_policy_does_not_sign_blob_requests(
    azurite: Azurite, credential: ManagedIdentityCredential
) -> None:
    policy = CountingPolicy(credential, STORAGE_SCOPE)
    async with BlobServiceClient(
        azurite.account_url,
        authentication_policy=policy,
        connection_verify=azurite.ca_file,
        retry_total=0,
    ) as client:
        with pytest.raises(HttpResponseError) as refused:
            await client.create_container(container_name())
    assert refused.value.status_code in (401, 403)
    assert policy.calls == 0
