"""One module per hosting source: each builds its requests and parses its responses (sans-IO)."""

from __future__ import annotations

from collections.abc import Sequence

from .._environment import SourceConfig
from .._models import Identity, ManagedIdentitySource
from ._base import Target, TokenSource, scope_to_resource
from .app_service import AppServiceSource
from .azure_arc import AzureArcSource
from .azure_ml import AzureMLSource
from .cloud_shell import CloudShellSource
from .imds import ImdsSource
from .service_fabric import ServiceFabricSource
from .workload_identity import WorkloadIdentitySource

__all__ = [
    "AppServiceSource",
    "AzureArcSource",
    "AzureMLSource",
    "CloudShellSource",
    "ImdsSource",
    "ServiceFabricSource",
    "Target",
    "TokenSource",
    "WorkloadIdentitySource",
    "create_source",
    "scope_to_resource",
]

_SOURCES: dict[ManagedIdentitySource, type[TokenSource]] = {
    ManagedIdentitySource.IMDS: ImdsSource,
    ManagedIdentitySource.APP_SERVICE: AppServiceSource,
    ManagedIdentitySource.AZURE_ARC: AzureArcSource,
    ManagedIdentitySource.SERVICE_FABRIC: ServiceFabricSource,
    ManagedIdentitySource.AZURE_ML: AzureMLSource,
    ManagedIdentitySource.CLOUD_SHELL: CloudShellSource,
}


def create_source(
    config: SourceConfig,
    identity: Identity,
    *,
    additionally_allowed_tenants: Sequence[str] = (),
    multitenant_disabled: bool = False,
) -> TokenSource:
    """The source object for a detected configuration.

    Raises:
        ValueError: The source cannot serve the requested identity (Cloud Shell with a
            user-assigned identity, workload identity without a client ID).
    """
    if config.source is ManagedIdentitySource.WORKLOAD_IDENTITY:
        return WorkloadIdentitySource(
            config,
            identity,
            additionally_allowed_tenants=additionally_allowed_tenants,
            multitenant_disabled=multitenant_disabled,
        )
    return _SOURCES[config.source](config, identity)
