"""One module per hosting source: its token flow, its requests and its responses (sans-IO)."""

from __future__ import annotations

import importlib
from collections.abc import Sequence

from .._environment import SourceConfig
from .._models import Identity, ManagedIdentitySource
from ._base import Target, TokenSource, scope_to_resource

__all__ = ["Target", "TokenSource", "create_source", "scope_to_resource"]

#: Module and class of each source, imported when a credential selects it.
_SOURCES = {
    ManagedIdentitySource.IMDS: ("imds", "ImdsSource"),
    ManagedIdentitySource.APP_SERVICE: ("app_service", "AppServiceSource"),
    ManagedIdentitySource.AZURE_ARC: ("azure_arc", "AzureArcSource"),
    ManagedIdentitySource.SERVICE_FABRIC: ("service_fabric", "ServiceFabricSource"),
    ManagedIdentitySource.AZURE_ML: ("azure_ml", "AzureMLSource"),
    ManagedIdentitySource.CLOUD_SHELL: ("cloud_shell", "CloudShellSource"),
    ManagedIdentitySource.WORKLOAD_IDENTITY: ("workload_identity", "WorkloadIdentitySource"),
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
    module_name, class_name = _SOURCES[config.source]
    module = importlib.import_module(f"{__name__}.{module_name}")
    source_class: type[TokenSource] = getattr(module, class_name)
    if config.source is ManagedIdentitySource.WORKLOAD_IDENTITY:
        return source_class(  # type: ignore[call-arg]
            config,
            identity,
            additionally_allowed_tenants=additionally_allowed_tenants,
            multitenant_disabled=multitenant_disabled,
        )
    return source_class(config, identity)
