"""Azure Machine Learning compute (and App Service's legacy 2017-09-01 protocol)."""

from __future__ import annotations

from .._constants import AZURE_ML_API_VERSION
from .._models import ManagedIdentitySource, TokenRequest
from ._base import Target, TokenSource, build_url, identity_params


class AzureMLSource(TokenSource):
    kind = ManagedIdentitySource.AZURE_ML

    def build_request(
        self, target: Target, *, claims: str | None = None, assertion: str | None = None
    ) -> TokenRequest:
        params = [("api-version", AZURE_ML_API_VERSION), ("resource", target.resource)]
        # The 2017 API spells the client id parameter "clientid".
        params += identity_params(self.identity, client_id="clientid", resource_id="msi_res_id")
        assert self.config.secret is not None
        return TokenRequest(
            "GET",
            build_url(self.config.endpoint, params),
            headers=(("secret", self.config.secret),),
            secret_headers=frozenset({"secret"}),
        )
