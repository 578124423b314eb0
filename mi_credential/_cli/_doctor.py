"""``doctor``: which source would be used and why, a probe of its endpoint, and what to do."""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .._constants import EnvironmentVariables as Env
from .._credential import ManagedIdentityCredential
from .._environment import detect_source
from .._errors import (
    CredentialUnavailableError,
    IdentityMismatchError,
    InvalidTokenResponseError,
    ManagedIdentityError,
)
from .._models import ManagedIdentitySource

DEFAULT_SCOPE = "https://management.azure.com/.default"

#: Values shown only as "set (N characters)".
_SECRET_VARIABLES = frozenset({Env.IDENTITY_HEADER, Env.MSI_SECRET})


@dataclass
class Diagnosis:
    """What ``doctor`` found."""

    healthy: bool
    source: ManagedIdentitySource | None
    reason: str
    variables: list[tuple[str, str]] = field(default_factory=list)
    probe: str = ""
    problem: str = ""
    hint: str = ""
    elapsed: float = 0.0

    def render(self) -> str:
        lines = ["Environment:"]
        lines += [f"  {name:<38} {value}" for name, value in self.variables]
        source = self.source.label if self.source else "none"
        lines += ["", f"Source:  {source}", f"Why:     {self.reason}"]
        if self.probe:
            lines.append(f"Probe:   {self.probe}")
        if self.problem:
            lines.append(f"Problem: {self.problem}")
        if self.hint:
            lines.append(f"Fix:     {self.hint}")
        lines += ["", "HEALTHY" if self.healthy else "UNHEALTHY"]
        return "\n".join(lines)


def describe_variables(environ: Mapping[str, str]) -> list[tuple[str, str]]:
    """Every variable that takes part in detection, secrets masked."""
    rows = []
    for name in Env.ALL:
        value = environ.get(name)
        if value is None:
            shown = "(not set)"
        elif value == "":
            shown = "(set, empty: counts as not set)"
        elif name in _SECRET_VARIABLES:
            shown = f"(set, {len(value)} characters, hidden)"
        elif name == Env.AZURE_FEDERATED_TOKEN_FILE:
            readable = os.access(value, os.R_OK)
            shown = f"{value} ({'readable' if readable else 'NOT readable'})"
        else:
            shown = value
        rows.append((name, shown))
    return rows


async def diagnose(
    environ: Mapping[str, str],
    *,
    scope: str = DEFAULT_SCOPE,
    client_id: str | None = None,
    timeout: float = 5.0,
    connection_verify: bool | str = True,
    arc_key_directory: str | None = None,
    clock: Callable[[], float] | None = None,
    sleep: Callable[[float], Awaitable[Any]] | None = None,
) -> Diagnosis:
    """Detect the source from ``environ``, probe it with one token request, and explain.

    Never raises for a managed identity problem and never takes much longer than ``timeout``.
    """
    variables = describe_variables(environ)
    try:
        config = detect_source(environ, arc_key_directory=arc_key_directory)
    except ValueError as exc:
        return Diagnosis(
            False,
            None,
            "the environment is malformed",
            variables,
            problem=str(exc),
            hint="Correct the variable named above.",
        )
    if config is None:
        return Diagnosis(
            False,
            None,
            "IDENTITY_ENDPOINT is set but neither IDENTITY_HEADER (App Service) nor IMDS_ENDPOINT "
            "(Azure Arc) is",
            variables,
            problem="No managed identity source can be determined.",
            hint="Set the missing variable, or unset IDENTITY_ENDPOINT to use IMDS.",
        )
    diagnosis = Diagnosis(False, config.source, config.reason, variables)
    start = time.monotonic()
    try:
        credential = ManagedIdentityCredential(
            environ=environ,
            client_id=client_id,
            timeout=timeout,
            connection_timeout=min(2.0, timeout),
            read_timeout=timeout,
            connection_verify=connection_verify,
            arc_key_directory=arc_key_directory,
            clock=clock,
            sleep=sleep,
        )
    except ValueError as exc:
        diagnosis.problem = str(exc)
        diagnosis.hint = "Correct the identity arguments or the environment."
        return diagnosis
    async with credential:
        try:
            token = await credential.get_token(scope)
        except ManagedIdentityError as exc:
            diagnosis.elapsed = time.monotonic() - start
            diagnosis.probe = f"a token for {scope} failed after {diagnosis.elapsed:.1f} s"
            diagnosis.problem = str(exc)
            diagnosis.hint = _hint(exc, config.source)
            return diagnosis
        except ValueError as exc:
            diagnosis.problem = str(exc)
            diagnosis.hint = "Pass one scope, such as https://management.azure.com/.default."
            return diagnosis
    diagnosis.elapsed = time.monotonic() - start
    diagnosis.healthy = True
    minutes = (token.expires_on - time.time()) / 60
    diagnosis.probe = (
        f"got a token for {scope} in {diagnosis.elapsed * 1000:.0f} ms, valid {minutes:.0f} min"
    )
    return diagnosis


def _hint(error: ManagedIdentityError, source: ManagedIdentitySource) -> str:
    status = error.status_code
    if isinstance(error, IdentityMismatchError):
        return (
            "The platform answered with another identity's token: check that the identity asked "
            "for (--client-id) is assigned to this resource and that the platform supports "
            "selecting user-assigned identities."
        )
    if isinstance(error, InvalidTokenResponseError):
        return (
            "The endpoint answered but not with a token: a proxy may be intercepting the "
            "request (check HTTP_PROXY/NO_PROXY; managed identity endpoints must be reached "
            "directly)."
        )
    if status == 429:
        return "The endpoint is throttling: too many token requests. Cache tokens; retry later."
    if status == 400 and source is ManagedIdentitySource.IMDS:
        return (
            "Assign the identity to this VM/scale set (portal: Identity blade), or pass the "
            "client ID of a user-assigned identity that is assigned (--client-id)."
        )
    if status in (401, 403) and source is ManagedIdentitySource.IMDS:
        return (
            "Something between here and IMDS refused the request (IMDS itself needs no secret): "
            "a proxy or firewall intercepts 169.254.169.254, or this is not an Azure VM."
        )
    if status in (401, 403):
        return "The endpoint refused the request's secret: check the platform's variables above."
    if status is not None and status >= 500:
        return "The endpoint failed: usually transient; retry, then check the platform's status."
    if status is not None:
        return "Check the identity and the scope; the endpoint's own message is above."
    if isinstance(error, CredentialUnavailableError):
        if source is ManagedIdentitySource.IMDS:
            return (
                "Nothing answered at the IMDS address: this is probably not an Azure VM, scale "
                "set or AKS node, or a firewall/proxy blocks 169.254.169.254."
            )
        if source is ManagedIdentitySource.WORKLOAD_IDENTITY:
            return "Check the federated token file and the service account's token volume."
        return "Nothing answered at the endpoint: check the endpoint variable above."
    return "See the problem above."


async def run(args: argparse.Namespace) -> int:
    diagnosis = await diagnose(
        os.environ, scope=args.scope, client_id=args.client_id, timeout=args.timeout
    )
    print(diagnosis.render())
    return 0 if diagnosis.healthy else 1
