"""Get a token with this machine's managed identity, and show what it is (not the token).

    python samples/credential_direct.py                  # on Azure: any hosting source
    python samples/credential_direct.py --emulator       # anywhere: against the local emulator

Needs ``pip install mi-credential`` (and the ``emulator`` extra for ``--emulator``).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

from mi_credential import ManagedIdentityCredential, ManagedIdentityError

SCOPE = "https://management.azure.com/.default"


async def show_token(credential: ManagedIdentityCredential, scope: str) -> None:
    async with credential:
        info = await credential.get_token_info(scope)
        again = await credential.get_token_info(scope)  # served from the cache: no request
        print(f"source:      {credential.source.label if credential.source else 'none'}")
        print(f"scope:       {scope}")
        print(f"expires in:  {(info.expires_on - time.time()) / 3600:.1f} h")
        print(f"second call: {'from the cache' if again.token == info.token else 'new token'}")


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scope", default=SCOPE)
    parser.add_argument("--client-id", help="a user-assigned identity's client ID")
    parser.add_argument("--emulator", action="store_true", help="use the local emulator")
    args = parser.parse_args()
    try:
        if args.emulator:
            from mi_credential.emulator import Emulator

            async with Emulator() as emulator:
                await show_token(
                    ManagedIdentityCredential(environ=emulator.environ("imds")), args.scope
                )
        else:
            await show_token(ManagedIdentityCredential(client_id=args.client_id), args.scope)
    except ManagedIdentityError as exc:  # the message says which source failed and why
        print(f"no token: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
