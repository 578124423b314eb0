"""``token``: get a token from the real environment and show what it is (not the token itself)."""

from __future__ import annotations

import argparse
import sys
import time

from .._credential import ManagedIdentityCredential
from .._errors import ManagedIdentityError
from .._sources._parse import decode_jwt_claims as decode_claims
from ._options import UsageError

__all__ = ["SHOWN_CLAIMS", "decode_claims", "run"]

#: Claims worth showing: who issued the token, to whom, for what, until when. Not secret.
SHOWN_CLAIMS = ("aud", "iss", "tid", "oid", "appid", "exp")


async def run(args: argparse.Namespace) -> int:
    identity_config = None
    if args.object_id:
        identity_config = {"object_id": args.object_id}
    elif args.resource_id:
        identity_config = {"resource_id": args.resource_id}
    try:
        credential = ManagedIdentityCredential(
            client_id=args.client_id, identity_config=identity_config, timeout=args.timeout
        )
    except ValueError as exc:  # the identity options or a malformed environment variable
        raise UsageError(str(exc)) from None
    async with credential:
        source = credential.source.label if credential.source else "none"
        start = time.perf_counter()
        try:
            info = await credential.get_token_info(args.scope)
        except ValueError as exc:  # the scope: the parser checked it already
            raise UsageError(str(exc)) from None
        except ManagedIdentityError as exc:
            print(f"source:   {source}", file=sys.stderr)
            print(f"error:    {exc}", file=sys.stderr)
            print("hint:     python -m mi_credential doctor", file=sys.stderr)
            return 1
        elapsed = time.perf_counter() - start
    print(f"source:     {source}")
    print(f"scope:      {args.scope}")
    print(f"acquired:   in {elapsed * 1000:.0f} ms")
    print(
        f"expires:    {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(info.expires_on))}"
        f" (in {(info.expires_on - time.time()) / 60:.0f} min)"
    )
    if info.refresh_on:
        print(f"refresh at: {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(info.refresh_on))}")
    print(f"type:       {info.token_type}")
    claims = decode_claims(info.token)
    if claims is None:
        print("claims:     (not a JWT)")
    else:
        for name in SHOWN_CLAIMS:
            if name in claims:
                print(f"{name + ':':<11} {claims[name]}")
    if args.show_token:
        print(f"token:      {info.token}")
    return 0
