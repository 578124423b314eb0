"""Azure Arc-enabled servers: the HIMDS agent's challenge-response protocol.

The first request is answered 401 with ``WWW-Authenticate: Basic realm=<key file>``. The agent
writes a secret into that file, readable only by privileged local users; the request is repeated
with ``Authorization: Basic <file content>``. We read the file only if it lies directly in the
agent's token directory, has the ``.key`` extension and is at most 4096 bytes
(https://learn.microsoft.com/azure/azure-arc/servers/managed-identity-authentication).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .._constants import AZURE_ARC_API_VERSION
from .._errors import ManagedIdentityError, scrub
from .._models import (
    FileRead,
    IdentityKind,
    LocalFile,
    ManagedIdentitySource,
    RawResponse,
    TokenRequest,
)
from ..http import parse_challenges
from ._base import Flow, Target, TokenSource, build_url, identity_params, read, send


class AzureArcSource(TokenSource):
    kind = ManagedIdentitySource.AZURE_ARC

    def flow(self, target: Target, claims: str | None) -> Flow:
        """Ask; answer a 401 challenge once with the key file it names; return the response."""
        request = self.build_request(target)
        response = yield from send(request)
        if response.status != 401:
            return response
        path = self.challenge_path(response)
        key = yield from read(FileRead(LocalFile.ARC_KEY, path, self.config.key_directory))
        return (yield from send(request.with_header("Authorization", f"Basic {key}", secret=True)))

    def build_request(
        self, target: Target, *, claims: str | None = None, assertion: str | None = None
    ) -> TokenRequest:
        params = [("api-version", AZURE_ARC_API_VERSION), ("resource", target.resource)]
        # HIMDS honours IMDS's msi_res_id spelling.
        params += identity_params(self.identity, resource_id="msi_res_id")
        return TokenRequest(
            "GET", build_url(self.config.endpoint, params), headers=(("Metadata", "true"),)
        )

    def challenge_path(self, response: RawResponse) -> str:
        """The key file a 401 challenge names: ``Basic realm=<path>``.

        Raises:
            ManagedIdentityError: The challenge is missing or malformed.
        """
        header = response.header("www-authenticate")
        if not header or not header.strip():
            raise ManagedIdentityError(
                "Azure Arc answered 401 without a WWW-Authenticate challenge; the agent "
                "(himds) may be misconfigured.",
                source=self.kind,
                status_code=response.status,
            )
        basic = [c for c in parse_challenges(header) if c.scheme == "basic"]
        path = basic[0].params.get("realm", "").strip() if len(basic) == 1 else ""
        if not path or "=" in path:
            raise ManagedIdentityError(
                "Azure Arc answered 401 with an unexpected WWW-Authenticate challenge "
                f"{scrub(header, limit=120)!r}; expected 'Basic realm=<key file path>'.",
                source=self.kind,
                status_code=response.status,
            )
        return path

    def check_payload(self, payload: Mapping[str, Any], response: RawResponse) -> None:
        # An agent without user-assigned identity support ignores the selector and returns the
        # system-assigned identity's token: refuse it rather than hand out the wrong identity.
        identity = self.identity
        if identity.kind is IdentityKind.SYSTEM_ASSIGNED or identity.value is None:
            return
        if identity.kind is IdentityKind.CLIENT_ID:
            echoed = payload.get("client_id")
        elif identity.kind is IdentityKind.OBJECT_ID:
            echoed = payload.get("object_id")
        else:
            echoed = payload.get("msi_res_id") or payload.get("mi_res_id")
        if not echoed or str(echoed).lower() != identity.value.lower():
            raise ManagedIdentityError(
                "Azure Arc did not confirm the requested user-assigned managed identity in the "
                "token response. The agent likely does not support user-assigned managed "
                f"identities and returned the system-assigned identity ({identity.describe()} "
                "was requested).",
                source=self.kind,
                status_code=response.status,
            )
