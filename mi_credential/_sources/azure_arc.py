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
from .._models import IdentityKind, ManagedIdentitySource, RawResponse, TokenRequest
from ._base import Target, TokenSource, build_url, identity_params


class AzureArcSource(TokenSource):
    kind = ManagedIdentitySource.AZURE_ARC
    answers_challenges = True

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
        """The key file a 401 challenge names.

        Raises:
            ManagedIdentityError: The challenge is missing or malformed.
        """
        header = (response.header("www-authenticate") or "").strip()
        if not header:
            raise ManagedIdentityError(
                "Azure Arc answered 401 without a WWW-Authenticate challenge; the agent "
                "(himds) may be misconfigured.",
                source=self.kind,
                status_code=response.status,
            )
        scheme, sep, path = header.partition("=")
        if not sep or scheme.strip().lower() != "basic realm" or "=" in path:
            raise ManagedIdentityError(
                "Azure Arc answered 401 with an unexpected WWW-Authenticate challenge "
                f"{scrub(header, limit=120)!r}; expected 'Basic realm=<key file path>'.",
                source=self.kind,
                status_code=response.status,
            )
        return path.strip().strip('"')

    def authorize(self, request: TokenRequest, key: str) -> TokenRequest:
        return request.with_header("Authorization", f"Basic {key}", secret=True)

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
