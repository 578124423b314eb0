"""List the Azure subscriptions this machine's managed identity can read, with an aiohttp
session that signs each request to Azure Resource Manager (mi_credential_aiohttp).

    python samples/aiohttp_client.py                     # on Azure (the identity needs Reader)
    python samples/aiohttp_client.py --emulator          # anywhere: against the local emulator

Needs ``pip install mi-credential`` (and the ``emulator`` extra for ``--emulator``).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from urllib.parse import urlsplit

from mi_credential import ManagedIdentityCredential, ManagedIdentityError
from mi_credential_aiohttp import create_session

ARM_URL = "https://management.azure.com"
ARM_SCOPE = "https://management.azure.com/.default"


async def list_subscriptions(
    credential: ManagedIdentityCredential, arm_url: str = ARM_URL, allow_http: Sequence[str] = ()
) -> list[str]:
    # Only Resource Manager's origin gets a token; any other URL this session fetches does not.
    origins = {urlsplit(arm_url).netloc: ARM_SCOPE}
    async with (
        credential,
        create_session(credential, origins, allow_http=allow_http) as session,
        session.get(f"{arm_url}/subscriptions", params={"api-version": "2022-12-01"}) as response,
    ):
        response.raise_for_status()
        body = await response.json()
    return [f"{s['displayName']} ({s['subscriptionId']})" for s in body["value"]]


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--emulator", action="store_true", help="use the local emulator")
    args = parser.parse_args()
    try:
        if args.emulator:
            from _emulated_azure import emulated_azure

            async with emulated_azure("imds") as azure:
                credential = ManagedIdentityCredential(environ=azure.environ)
                # The stand-in listens on plain http: allowed for 127.0.0.1 only.
                names = await list_subscriptions(credential, azure.arm_url, ["127.0.0.1"])
        else:
            names = await list_subscriptions(ManagedIdentityCredential())
    except ManagedIdentityError as exc:
        print(f"no token: {exc}", file=sys.stderr)
        return 1
    print(f"{len(names)} subscription(s):")
    for name in names:
        print(f"  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
