"""Service Fabric: HTTPS to the cluster's token service, its certificate pinned to
IDENTITY_SERVER_THUMBPRINT (the service presents a self-signed certificate).

https://learn.microsoft.com/azure/service-fabric/how-to-managed-identity-service-fabric-app-code
"""

from __future__ import annotations

from .._constants import SERVICE_FABRIC_API_VERSION
from .._errors import ManagedIdentityError
from .._models import ManagedIdentitySource, RawResponse, TokenRequest
from ._base import Target, TokenSource, build_url


class ServiceFabricSource(TokenSource):
    kind = ManagedIdentitySource.SERVICE_FABRIC

    def build_request(
        self, target: Target, *, claims: str | None = None, assertion: str | None = None
    ) -> TokenRequest:
        if self.identity.is_user_assigned:
            raise ManagedIdentityError(
                "Specifying a client_id or identity_config is not supported by the Service "
                "Fabric managed identity environment. The managed identity configuration is "
                "determined by the Service Fabric cluster resource configuration. See "
                "https://aka.ms/servicefabricmi for more information.",
                source=self.kind,
            )
        params = [("api-version", SERVICE_FABRIC_API_VERSION), ("resource", target.resource)]
        assert self.config.secret is not None
        return TokenRequest(
            "GET",
            build_url(self.config.endpoint, params),
            headers=(("Secret", self.config.secret),),
            secret_headers=frozenset({"secret"}),
            tls_thumbprint=self.config.thumbprint,
        )

    def hint(self, response: RawResponse) -> str:
        if response.status in (401, 403):
            return "The Secret (IDENTITY_HEADER) was refused; check the application's environment."
        return super().hint(response)
