"""App Service, Azure Functions, Container Apps (the 2019-08-01 protocol).

https://learn.microsoft.com/azure/app-service/overview-managed-identity#rest-endpoint-reference
"""

from __future__ import annotations

from .._constants import APP_SERVICE_API_VERSION
from .._models import ManagedIdentitySource, RawResponse, TokenRequest
from ._base import Target, TokenSource, build_url, identity_params


class AppServiceSource(TokenSource):
    kind = ManagedIdentitySource.APP_SERVICE

    def build_request(
        self, target: Target, *, claims: str | None = None, assertion: str | None = None
    ) -> TokenRequest:
        params = [("api-version", APP_SERVICE_API_VERSION), ("resource", target.resource)]
        params += identity_params(self.identity, resource_id="mi_res_id")
        assert self.config.secret is not None
        return TokenRequest(
            "GET",
            build_url(self.config.endpoint, params),
            headers=(("X-IDENTITY-HEADER", self.config.secret),),
            secret_headers=frozenset({"x-identity-header"}),
        )

    def hint(self, response: RawResponse) -> str:
        if response.status in (401, 403):
            return (
                "IDENTITY_HEADER was refused: check that it is the value the platform set for "
                "this process (the platform rotates it)."
            )
        if response.status in (400, 404):
            return (
                "Check that the app has the requested identity assigned and that the resource "
                "URI is correct."
            )
        return super().hint(response)
