"""AKS workload identity: exchange the federated service account token (a file the kubelet
rotates) for an access token at Microsoft Entra ID, with the client-credentials grant.

https://learn.microsoft.com/azure/aks/workload-identity-overview
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from .._constants import CAE_CLIENT_CAPABILITY_CLAIMS, CLIENT_ASSERTION_TYPE
from .._environment import SourceConfig
from .._errors import ManagedIdentityError
from .._models import (
    FileRead,
    Identity,
    IdentityKind,
    LocalFile,
    ManagedIdentitySource,
    RawResponse,
    TokenRequest,
)
from ._base import Flow, Target, TokenSource, read, send
from ._parse import decode_json_object

EXPIRED_ASSERTION = "AADSTS700024"
"""Entra ID's error for a client assertion that is not within its valid time range."""


class WorkloadIdentitySource(TokenSource):
    kind = ManagedIdentitySource.WORKLOAD_IDENTITY
    mismatch_hint = (
        "Microsoft Entra ID issues tokens to the application that asks: check the authority "
        "host (AZURE_AUTHORITY_HOST) and any proxy in between."
    )

    def __init__(
        self,
        config: SourceConfig,
        identity: Identity,
        *,
        additionally_allowed_tenants: Sequence[str] = (),
        multitenant_disabled: bool = False,
    ) -> None:
        if identity.kind in (IdentityKind.OBJECT_ID, IdentityKind.RESOURCE_ID):
            raise ValueError(
                "Workload identity names the application by client ID; identity_config "
                f"{identity.kind.value} cannot be honoured. Pass client_id instead."
            )
        client_id = identity.value if identity.kind is IdentityKind.CLIENT_ID else None
        client_id = client_id or config.client_id
        if not client_id:
            raise ValueError(
                "Workload identity was selected but no client ID was provided. Configure the "
                'environment with a client ID or pass a value for "client_id" argument'
            )
        super().__init__(config, identity)
        self.client_id = client_id
        self.allowed_tenants = frozenset(additionally_allowed_tenants)
        self.multitenant_disabled = multitenant_disabled

    @property
    def token_url_template(self) -> str:
        return f"{self.config.endpoint}/{{tenant}}/oauth2/v2.0/token"

    def target(
        self, scopes: Sequence[str], tenant_id: str | None, enable_cae: bool = False
    ) -> Target:
        if not scopes:
            raise ValueError("At least one scope is required.")
        return Target(" ".join(scopes), self.resolve_tenant(tenant_id), enable_cae)

    def sent_claims(self, target: Target, claims: str | None) -> str | None:
        if target.cae:
            return merge_cae_claims(claims)
        return claims or None

    def flow(self, target: Target, claims: str | None) -> Flow:
        """Read the federated token (re-read when the file changed: the kubelet rotates it),
        exchange it. Entra ID refusing it as expired (``AADSTS700024``) has the file read again,
        whatever its stat; a new token there is exchanged once more, else the refusal stands."""
        path = self.config.token_file
        assert path is not None
        assertion = yield from read(FileRead(LocalFile.FEDERATED_TOKEN, path))
        response = yield from send(self.build_request(target, claims=claims, assertion=assertion))
        if not assertion_expired(response):
            return response
        renewed = yield from read(FileRead(LocalFile.FEDERATED_TOKEN, path, fresh=True))
        if renewed == assertion:
            return response
        return (yield from send(self.build_request(target, claims=claims, assertion=renewed)))

    def resolve_tenant(self, tenant_id: str | None) -> str:
        """The tenant to ask: the configured one, or ``tenant_id`` if it is allowed.

        Raises:
            ManagedIdentityError: ``tenant_id`` is not allowed for this credential.
        """
        configured = self.config.tenant_id
        assert configured is not None
        if not tenant_id or tenant_id == configured or self.multitenant_disabled:
            return configured
        if "*" in self.allowed_tenants or tenant_id in self.allowed_tenants:
            if not all(c.isalnum() or c in "-." for c in tenant_id):
                raise ValueError(f"Invalid tenant ID {tenant_id!r}.")
            return tenant_id
        raise ManagedIdentityError(
            f"The current credential is not configured to acquire tokens for tenant {tenant_id}. "
            "To enable acquiring tokens for this tenant add it to the "
            'additionally_allowed_tenants when creating the credential, or add "*" to '
            "additionally_allowed_tenants to allow acquiring tokens for any tenant.",
            source=self.kind,
        )

    def build_request(
        self, target: Target, *, claims: str | None = None, assertion: str | None = None
    ) -> TokenRequest:
        assert assertion is not None and target.tenant_id is not None
        form = [
            ("client_assertion", assertion),
            ("client_assertion_type", CLIENT_ASSERTION_TYPE),
            ("client_id", self.client_id),
            ("grant_type", "client_credentials"),
            ("scope", target.resource),
        ]
        if claims:
            form.append(("claims", claims))
        return TokenRequest(
            "POST",
            self.token_url_template.format(tenant=target.tenant_id),
            form=tuple(form),
            secret_form_fields=frozenset({"client_assertion"}),
        )

    def hint(self, response: RawResponse) -> str:
        if response.status in (400, 401):
            return (
                f"Check the federated identity credential of application {self.client_id} "
                "(issuer and subject must match this service account) and the tenant."
            )
        return super().hint(response)

    def describe_identity(self) -> str:
        return f"application client_id={self.client_id}"

    def checked_identity(self) -> tuple[IdentityKind, str] | None:
        """The application: its token's ``appid`` (or ``azp``) is its client ID."""
        return IdentityKind.CLIENT_ID, self.client_id

    @property
    def endpoint_name(self) -> str:
        return "Microsoft Entra ID"


def assertion_expired(response: RawResponse) -> bool:
    """Entra ID refused the client assertion as outside its valid time range (expired)."""
    if response.status not in (400, 401):
        return False
    payload = decode_json_object(response)
    description = payload.get("error_description") if payload else None
    return isinstance(description, str) and EXPIRED_ASSERTION in description


def merge_cae_claims(claims: str | None) -> str:
    """Add the CAE client capability to ``claims`` (a JSON object string, possibly empty).

    Raises:
        ValueError: ``claims`` is not a JSON object.
    """
    capability = json.loads(CAE_CLIENT_CAPABILITY_CLAIMS)
    if not claims:
        return CAE_CLIENT_CAPABILITY_CLAIMS
    try:
        requested = json.loads(claims)
    except (ValueError, RecursionError):
        raise ValueError("claims must be a JSON object.") from None
    if not isinstance(requested, dict):
        raise ValueError("claims must be a JSON object.")
    access_token = requested.setdefault("access_token", {})
    if isinstance(access_token, dict):
        access_token.update(capability["access_token"])
    return json.dumps(requested, separators=(",", ":"))
