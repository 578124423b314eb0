"""The credential's constructor keywords: validation, and the source they select. Credentials
created alike (the usual case: same environment, same identity) share one source object."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

from ._constants import EnvironmentVariables as Env
from ._environment import SourceConfig, detect_source
from ._errors import TROUBLESHOOTING_URL
from ._models import Identity
from ._sources import TokenSource, create_source

#: azure-core pipeline keywords azure-identity accepts; they configure a pipeline we do not have.
IGNORED_KWARGS = frozenset(
    {
        "transport",
        "policies",
        "per_call_policies",
        "per_retry_policies",
        "logging_enable",
        "logging_policy",
        "http_logging_policy",
        "retry_policy",
        "retry_total",
        "retry_connect",
        "retry_read",
        "retry_status",
        "retry_backoff_factor",
        "retry_backoff_max",
        "retry_mode",
        "proxies",
        "headers",
        "user_agent_policy",
        "distributed_tracing_policy",
        "_enable_imds_probe",
    }
)

#: The longest timeout accepted: anything longer is a mistake (``inf`` would overflow the loop's
#: timers), and no acquisition should wait a day.
MAX_TIMEOUT = 86400.0

NO_SOURCE_MESSAGE = (
    "No managed identity endpoint found: IDENTITY_ENDPOINT is set but neither IDENTITY_HEADER "
    "(App Service) nor IMDS_ENDPOINT (Azure Arc) is, so the hosting platform cannot be "
    f"determined. Visit {TROUBLESHOOTING_URL} to troubleshoot this issue."
)



def check_options(
    kwargs: Mapping[str, Any], timeout: float, connection_timeout: float, read_timeout: float
) -> None:
    """Refuse unknown keywords and timeouts that are not positive numbers.

    Raises:
        TypeError: An unknown keyword argument.
        ValueError: A timeout that is not a positive number of seconds, up to a day.
    """
    unknown = sorted(set(kwargs) - IGNORED_KWARGS)
    if unknown:
        raise TypeError(
            "ManagedIdentityCredential got unexpected keyword arguments: " + ", ".join(unknown)
        )
    for name, value in (
        ("timeout", timeout),
        ("connection_timeout", connection_timeout),
        ("read_timeout", read_timeout),
    ):
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not 0 < value <= MAX_TIMEOUT
        ):
            raise ValueError(
                f"{name} must be a positive number of seconds up to {MAX_TIMEOUT:.0f} (a day), "
                f"not {value!r}."
            )


@functools.lru_cache(maxsize=32)
def configure(
    environment: tuple[str | None, ...],
    identity: Identity,
    exclude_workload_identity: bool,
    additionally_allowed_tenants: tuple[str, ...],
    arc_key_directory: str | None,
) -> tuple[SourceConfig | None, TokenSource | None]:
    """The source configuration and the source object for the values of :data:`Env.ALL`.

    Both are immutable, so credentials created alike (the usual case: same environment, same
    identity) share them instead of each holding copies.

    Raises:
        ValueError: As :func:`detect_source` and :func:`create_source` (not cached).
    """
    env = {
        name: value for name, value in zip(Env.ALL, environment, strict=True) if value is not None
    }
    config = detect_source(
        env,
        exclude_workload_identity=exclude_workload_identity,
        arc_key_directory=arc_key_directory,
    )
    if config is None:
        return None, None
    disable_multitenant = env.get(Env.AZURE_IDENTITY_DISABLE_MULTITENANTAUTH, "")
    source = create_source(
        config,
        identity,
        additionally_allowed_tenants=additionally_allowed_tenants,
        multitenant_disabled=disable_multitenant.strip().lower() in ("1", "true"),
    )
    return config, source
