"""``doctor``: which source would be used and why, a probe of its endpoint, and what to do."""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from .._constants import IMDS_DEFAULT_AUTHORITY
from .._constants import EnvironmentVariables as Env
from .._credential import ManagedIdentityCredential
from .._environment import SourceConfig, detect_source
from .._errors import (
    CredentialUnavailableError,
    IdentityMismatchError,
    InvalidTokenResponseError,
    ManagedIdentityError,
)
from .._models import ManagedIdentitySource

DEFAULT_SCOPE = "https://management.azure.com/.default"

#: Where no managed identity endpoint exists: how to try the library here all the same.
_EMULATE = (
    "to try managed identity on this machine, run `mi-credential emulate` in another terminal "
    "and export the variables it prints."
)

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
    timing: str = ""
    cause: str = ""
    problem: str = ""
    hint: str = ""
    local: str = ""
    elapsed: float = 0.0

    def render(self) -> str:
        lines = ["Environment:"]
        lines += [f"  {name:<38} {value}" for name, value in self.variables]
        source = self.source.label if self.source else "none"
        lines += ["", f"Source:  {source}", f"Why:     {self.reason}"]
        for label, text in (
            ("Probe:  ", self.probe),
            ("Timing: ", self.timing),
            ("Cause:  ", self.cause),
            ("Problem:", self.problem),
            ("Fix:    ", self.hint),
            ("Locally:", self.local),
        ):
            if text:
                lines.append(f"{label} {text}")
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
            diagnosis.timing = describe_timing(exc)
            finding = explain(exc, endpoint_of(config), timeout)
            diagnosis.cause = finding.cause
            diagnosis.problem = str(exc)
            diagnosis.hint = finding.fix
            if finding.nothing_here:
                diagnosis.local = _EMULATE
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
    diagnosis.timing = f"answered in {diagnosis.elapsed:.2f} s"
    return diagnosis


@dataclass(frozen=True)
class Endpoint:
    """Where the probe goes, for messages: ``host:port`` and the variable that names it."""

    address: str
    variable: str | None
    """The variable that configured the endpoint; ``None``: IMDS's default address."""

    @property
    def origin(self) -> str:
        if self.variable is None:
            return "the default IMDS address"
        return f"configured by {self.variable}"


#: The variable that names each source's endpoint.
_ENDPOINT_VARIABLES = {
    ManagedIdentitySource.IMDS: Env.AZURE_POD_IDENTITY_AUTHORITY_HOST,
    ManagedIdentitySource.APP_SERVICE: Env.IDENTITY_ENDPOINT,
    ManagedIdentitySource.SERVICE_FABRIC: Env.IDENTITY_ENDPOINT,
    ManagedIdentitySource.AZURE_ARC: Env.IDENTITY_ENDPOINT,
    ManagedIdentitySource.AZURE_ML: Env.MSI_ENDPOINT,
    ManagedIdentitySource.CLOUD_SHELL: Env.MSI_ENDPOINT,
    ManagedIdentitySource.WORKLOAD_IDENTITY: Env.AZURE_AUTHORITY_HOST,
}

_DEFAULT_IMDS = urlsplit(IMDS_DEFAULT_AUTHORITY)


def endpoint_of(config: SourceConfig) -> Endpoint:
    """The probed endpoint's ``host:port`` (never a path, query or user info) and its variable."""
    parts = urlsplit(config.endpoint)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    imds = config.source is ManagedIdentitySource.IMDS
    default = imds and parts.netloc == _DEFAULT_IMDS.netloc and parts.scheme == "http"
    return Endpoint(address, None if default else _ENDPOINT_VARIABLES[config.source])


class Finding(NamedTuple):
    """What the measurements of a failed probe show."""

    cause: str
    """What the probe saw (empty: nothing was measured)."""
    fix: str
    nothing_here: bool = False
    """No managed identity endpoint exists here (nothing connects): trying locally helps."""


#: How the transport words each way an endpoint may fail to answer (the "(...)" of the
#: "did not answer" message).
_REFUSED, _CONNECT_HANG, _SILENT = "(connection failed: ", "(timed out connecting)", "(timed out)"
_DEADLINE = "(the deadline passed)"


def explain(error: ManagedIdentityError, endpoint: Endpoint, timeout: float) -> Finding:
    """Name the cause of ``error`` the probe of ``endpoint`` measured, and what to do. Pure."""
    message = str(error)
    if error.status_code is not None:
        return Finding(
            f"{endpoint.address} answered HTTP {error.status_code}",
            _status_fix(error, endpoint),
        )
    if isinstance(error, (IdentityMismatchError, InvalidTokenResponseError)):
        return Finding(
            f"{endpoint.address} answered, but not with a usable token",
            _status_fix(error, endpoint),
        )
    if not isinstance(error, CredentialUnavailableError) or "did not answer" not in message:
        if error.source is ManagedIdentitySource.WORKLOAD_IDENTITY:
            fix = "Check the federated token file and the service account's token volume."
        else:
            fix = "See the problem above."
        return Finding("", fix)  # no answer was waited for: nothing to measure
    if _CONNECT_HANG in message:
        cause = (
            f"connects to {endpoint.address} hang: a firewall, VPN or proxy drops them "
            f"({endpoint.origin})"
        )
        fix = _nothing_here_fix(
            endpoint,
            f"Check the network path to {endpoint.address} (firewall rules, VPN, proxy), or "
            f"correct {endpoint.variable}.",
        )
        return Finding(cause, fix, nothing_here=True)
    if _REFUSED in message:
        reason = _os_reason(error) or message.split(_REFUSED, 1)[1].split(") after ", 1)[0]
        if "refused" in reason.lower() or "connect call failed" in reason.lower():
            cause = f"nothing listens at {endpoint.address}: the connection was refused"
            remedy = f"Start the service that should listen there, or correct {endpoint.variable}."
        else:
            cause = f"{endpoint.address} could not be reached: {reason}"
            remedy = f"Check the host name and the network, or correct {endpoint.variable}."
        return Finding(f"{cause} ({endpoint.origin})", _nothing_here_fix(endpoint, remedy), True)
    if _SILENT in message or _DEADLINE in message:
        return Finding(
            f"connected to {endpoint.address}, but no answer came within the {timeout:g} s timeout",
            f"The endpoint is slow or stuck: retry with a larger value, such as --timeout "
            f"{max(timeout * 4, 10):g}; if it stays silent, the service behind "
            f"{endpoint.address} needs attention.",
        )
    return Finding(f"{endpoint.address} did not answer", "See the problem above.")


def _nothing_here_fix(endpoint: Endpoint, remedy: str) -> str:
    if endpoint.variable is None:
        return (
            "Nothing answered at the IMDS address: this is probably not an Azure VM, scale set "
            "or AKS node, or a firewall/proxy blocks 169.254.169.254."
        )
    if endpoint.variable == Env.AZURE_POD_IDENTITY_AUTHORITY_HOST:
        return (
            f"{endpoint.variable} sends IMDS requests to {endpoint.address} instead of "
            f"169.254.169.254. {remedy} Unset it to use the default IMDS address."
        )
    return f"{endpoint.variable} names {endpoint.address}. {remedy}"


def _os_reason(error: BaseException) -> str | None:
    """The operating system's reason for a failed connect, from the error's causes (a verdict
    remembered from an earlier probe has none). ``None`` when it is unknown."""
    cause = error.__cause__
    while cause is not None:
        if isinstance(cause, OSError) and cause.errno:
            return os.strerror(cause.errno)
        cause = cause.__cause__
    return None


def _status_fix(error: ManagedIdentityError, endpoint: Endpoint) -> str:
    status = error.status_code
    imds = error.source is ManagedIdentitySource.IMDS
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
    if status == 400 and imds:
        return (
            "Assign the identity to this VM/scale set (portal: Identity blade), or pass the "
            "client ID of a user-assigned identity that is assigned (--client-id)."
        )
    if status in (401, 403) and imds and endpoint.variable is None:
        return (
            "Something between here and IMDS refused the request (IMDS itself needs no secret): "
            "a proxy or firewall intercepts 169.254.169.254, or this is not an Azure VM."
        )
    if status in (401, 403) and imds:
        return (
            f"The endpoint {endpoint.variable} names ({endpoint.address}) refused the request "
            "(IMDS itself needs no secret): check what serves that address."
        )
    if status in (401, 403):
        return "The endpoint refused the request's secret: check the platform's variables above."
    if status is not None and status >= 500:
        return "The endpoint failed: usually transient; retry, then check the platform's status."
    return "Check the identity and the scope; the endpoint's own message is above."


def describe_timing(error: ManagedIdentityError) -> str:
    """The probe's attempts and seconds, as the error measured them."""
    if "(Remembered: " in str(error):
        return "no request sent: this process remembers the endpoint's earlier verdict"
    if error.attempts == 0:
        return "no request sent"
    plural = "" if error.attempts == 1 else "s"
    return f"{error.attempts} attempt{plural} in {error.elapsed:.1f} s"


async def run(args: argparse.Namespace) -> int:
    diagnosis = await diagnose(
        os.environ, scope=args.scope, client_id=args.client_id, timeout=args.timeout
    )
    print(diagnosis.render())
    return 0 if diagnosis.healthy else 1
