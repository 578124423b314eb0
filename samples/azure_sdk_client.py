"""List the Azure subscriptions this machine's managed identity can read, with an azure-core
pipeline client built as Azure SDK clients are, authenticated by BearerTokenPolicy
(mi_credential_azure_core).

    python samples/azure_sdk_client.py                   # on Azure (the identity needs Reader)
    python samples/azure_sdk_client.py --emulator        # anywhere: against the local emulator

With a real SDK client, pass the credential as ``credential=`` (any client), or the policy as
``authentication_policy=`` (generated clients such as azure-mgmt-resource)::

    BlobServiceClient(account_url, credential=credential)
    ResourceManagementClient(credential, subscription_id,
                             authentication_policy=BearerTokenPolicy(credential, ARM_SCOPE))

Needs ``pip install mi-credential`` (and the ``emulator`` extra for ``--emulator``).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from azure.core import AsyncPipelineClient
from azure.core.exceptions import ClientAuthenticationError
from azure.core.pipeline.policies import (
    AsyncRetryPolicy,
    HeadersPolicy,
    HttpLoggingPolicy,
    RequestIdPolicy,
    UserAgentPolicy,
)
from azure.core.rest import HttpRequest

from mi_credential import ManagedIdentityCredential
from mi_credential_azure_core import BearerTokenPolicy

ARM_URL = "https://management.azure.com"
ARM_SCOPE = "https://management.azure.com/.default"


def resource_manager_client(
    credential: ManagedIdentityCredential, arm_url: str = ARM_URL
) -> AsyncPipelineClient[Any, Any]:
    """The pipeline a generated client builds, with BearerTokenPolicy for authentication."""
    policies: list[Any] = [
        RequestIdPolicy(),
        HeadersPolicy(),
        UserAgentPolicy(sdk_moniker="samples-azure-sdk-client"),
        AsyncRetryPolicy(),
        BearerTokenPolicy(credential, ARM_SCOPE),
        HttpLoggingPolicy(),  # logs Authorization as REDACTED
    ]
    return AsyncPipelineClient(arm_url, policies=policies)


async def list_subscriptions(
    credential: ManagedIdentityCredential, arm_url: str = ARM_URL, **options: Any
) -> list[str]:
    async with credential, resource_manager_client(credential, arm_url) as client:
        request = HttpRequest(
            "GET", f"{arm_url}/subscriptions", params={"api-version": "2022-12-01"}
        )
        response = await client.send_request(request, **options)
        response.raise_for_status()
        return [f"{s['displayName']} ({s['subscriptionId']})" for s in response.json()["value"]]


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--emulator", action="store_true", help="use the local emulator")
    args = parser.parse_args()
    try:
        if args.emulator:
            from _emulated_azure import emulated_azure

            async with emulated_azure("app_service") as azure:
                credential = ManagedIdentityCredential(environ=azure.environ)
                # The stand-in listens on plain http; tokens go over https only otherwise.
                names = await list_subscriptions(credential, azure.arm_url, enforce_https=False)
        else:
            names = await list_subscriptions(ManagedIdentityCredential())
    except ClientAuthenticationError as exc:  # ManagedIdentityError is one
        print(f"no token: {exc}", file=sys.stderr)
        return 1
    print(f"{len(names)} subscription(s):")
    for name in names:
        print(f"  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
