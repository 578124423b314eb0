"""IMDS: Azure VMs and scale sets, AKS nodes, AAD Pod Identity.

https://learn.microsoft.com/entra/identity/managed-identities-azure-resources/how-to-use-vm-token
"""

from __future__ import annotations

from .._constants import IMDS_API_VERSION, IMDS_DEFAULT_AUTHORITY
from .._errors import CredentialUnavailableError, ManagedIdentityError, scrub
from .._models import IdentityKind, ManagedIdentitySource, RawResponse, TokenRequest
from .._retry import IMDS_RETRY_POLICY
from ._base import Target, TokenSource, build_url, identity_params
from ._parse import describe_error


class ImdsSource(TokenSource):
    kind = ManagedIdentitySource.IMDS
    retry_policy = IMDS_RETRY_POLICY

    def build_request(
        self, target: Target, *, claims: str | None = None, assertion: str | None = None
    ) -> TokenRequest:
        params = [("api-version", IMDS_API_VERSION), ("resource", target.resource)]
        params += identity_params(self.identity, resource_id="msi_res_id")
        return TokenRequest(
            "GET",
            build_url(self.config.endpoint, params),
            headers=(("Metadata", "true"),),
        )

    def error_from_response(
        self, response: RawResponse, request: TokenRequest, *, attempts: int, elapsed: float
    ) -> ManagedIdentityError:
        code, description = describe_error(response, request.secrets)
        detail = ": ".join(part for part in (code, description) if part)
        detail = f" IMDS said: {detail}." if detail else ""
        if response.status == 400 and code != "invalid_resource":
            # IMDS answers 400 when the identity asked for is not assigned to this resource.
            if self.identity.kind is IdentityKind.SYSTEM_ASSIGNED and not self.identity.extra:
                what = (
                    "No system-assigned managed identity is enabled on this resource. Enable "
                    "it, or pass client_id/identity_config to use a user-assigned identity."
                )
            else:
                what = (
                    f"The {self.identity.describe()} is not assigned to this resource. Assign "
                    "it, or check the identifier."
                )
            message = f"ManagedIdentityCredential authentication unavailable. {what}{detail}"
            return self.response_error(
                CredentialUnavailableError, message, response, code, description, attempts, elapsed
            )
        if response.status == 403 and b"unreachable" in response.body.lower():
            # Docker Desktop's proxy answers 403 with "... A socket operation was attempted to
            # an unreachable network" (plain text, or inside a JSON error) when it cannot route
            # to IMDS: there is no IMDS here, so a credential chain moves on.
            if not detail:
                text = scrub(response.body.decode("utf-8", "replace"), request.secrets, limit=200)
                detail = f" The proxy said: {text}."
            message = (
                "ManagedIdentityCredential authentication unavailable: IMDS is unreachable "
                f"from here.{detail}"
            )
            return self.response_error(
                CredentialUnavailableError, message, response, code, description, attempts, elapsed
            )
        return super().error_from_response(response, request, attempts=attempts, elapsed=elapsed)

    def unreachable_hint(self) -> str:
        if not self.config.endpoint.startswith(IMDS_DEFAULT_AUTHORITY + "/"):
            return (
                "ManagedIdentityCredential authentication unavailable: no response from the IMDS "
                "endpoint that AZURE_POD_IDENTITY_AUTHORITY_HOST names. Check that it runs there."
            )
        return (
            "ManagedIdentityCredential authentication unavailable: no response from the IMDS "
            "endpoint. This code is probably not running on an Azure VM, scale set or AKS node."
        )
