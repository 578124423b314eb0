"""Azure Cloud Shell: a form POST to MSI_ENDPOINT. Only the signed-in user's identity exists."""

from __future__ import annotations

from .._environment import SourceConfig
from .._models import Identity, IdentityKind, ManagedIdentitySource, TokenRequest
from ._base import Target, TokenSource


class CloudShellSource(TokenSource):
    kind = ManagedIdentitySource.CLOUD_SHELL

    def __init__(self, config: SourceConfig, identity: Identity) -> None:
        if identity.kind is IdentityKind.CLIENT_ID:
            raise ValueError("client_id should not be set for cloud shell managed identity.")
        if identity.kind is not IdentityKind.SYSTEM_ASSIGNED:
            raise ValueError(
                "identity_config must not contain the following keys for cloud shell managed "
                "identity: client_id, object_id, resource_id."
            )
        super().__init__(config, identity)

    def build_request(
        self, target: Target, *, claims: str | None = None, assertion: str | None = None
    ) -> TokenRequest:
        return TokenRequest(
            "POST",
            self.config.endpoint,
            headers=(("Metadata", "true"),),
            form=(("resource", target.resource), *self.identity.extra),
        )
