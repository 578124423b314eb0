"""Who the emulator issues tokens to: managed identities, and the federated workload identity."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from . import _crypto

DEFAULT_TENANT_ID = "72f988bf-0000-4000-8000-00000000e1a7"
FEDERATED_AUDIENCE = "api://AzureADTokenExchange"
FEDERATED_SUBJECT = "system:serviceaccount:default:workload"


@dataclass(frozen=True)
class EmulatedIdentity:
    """A managed identity the emulator knows: its three identifiers."""

    client_id: str
    object_id: str
    resource_id: str

    @classmethod
    def create(
        cls, name: str, subscription: str = "00000000-0000-0000-0000-000000000000"
    ) -> EmulatedIdentity:
        """An identity with fresh identifiers; ``name`` goes in its ARM resource ID."""
        return cls(
            client_id=str(uuid.uuid4()),
            object_id=str(uuid.uuid4()),
            resource_id=(
                f"/subscriptions/{subscription}/resourcegroups/emulator/providers/"
                f"Microsoft.ManagedIdentity/userAssignedIdentities/{name}"
            ),
        )


def federated_token(issuer: str, subject: str, now: int, lifetime: int) -> str:
    """A Kubernetes-style service account token, the client assertion of workload identity."""
    return _crypto.mint(
        {
            "iss": issuer,
            "sub": subject,
            "aud": [FEDERATED_AUDIENCE],
            "iat": now,
            "nbf": now,
            "exp": now + lifetime,
        }
    )
