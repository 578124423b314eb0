"""What every source shares: the token flow, building URLs, parsing token responses, describing
errors. Pure: a source's flow yields the requests to send and the files to read, and the
acquisition (``_acquire``) does the I/O, in the style of httpx's ``Auth.auth_flow``.
"""

from __future__ import annotations

import functools
from collections.abc import Generator, Mapping, Sequence
from typing import Any, ClassVar, NamedTuple
from urllib.parse import parse_qsl, quote, urlsplit, urlunsplit

from .._constants import MAX_TOKEN_LIFETIME
from .._environment import SourceConfig
from .._errors import (
    CredentialUnavailableError,
    IdentityMismatchError,
    InvalidTokenResponseError,
    ManagedIdentityError,
    TokenRequestError,
    scrub,
)
from .._models import (
    FileRead,
    Identity,
    IdentityKind,
    ManagedIdentitySource,
    ParsedToken,
    RawResponse,
    TokenRequest,
)
from .._retry import DEFAULT_RETRY_POLICY, RetryPolicy
from ._parse import (
    decode_json_object,
    describe_error,
    parse_epoch,
    refresh_time,
    to_number,
    token_identifier,
    token_problem,
)

_DEFAULT_SUFFIX = "/.default"


class Target(NamedTuple):
    """What a token is for: the key of the cache and of single-flight.

    For managed identity endpoints ``resource`` is the resource URI derived from the one scope;
    for workload identity it is the space-joined scopes, and ``tenant_id`` the tenant.
    """

    resource: str
    tenant_id: str | None = None
    cae: bool = False
    """Workload identity: a CAE-capable token was asked for (cached apart from the others)."""

    @property
    def label(self) -> str:
        """The resource for logs and telemetry: scopes are shown as resources, so a resource
        reads the same whichever source it came from."""
        return " ".join(scope_to_resource(part) for part in self.resource.split(" "))


def scope_to_resource(scope: str) -> str:
    """``https://vault.azure.net/.default`` -> ``https://vault.azure.net``; others unchanged."""
    return scope[: -len(_DEFAULT_SUFFIX)] if scope.endswith(_DEFAULT_SUFFIX) else scope


@functools.lru_cache(maxsize=256)
def _quote(value: str) -> str:
    """Percent-encode a query name or value (cached: a credential sends the same few)."""
    return quote(value, safe="")


def build_url(endpoint: str, params: Sequence[tuple[str, str]]) -> str:
    """Append percent-encoded ``params`` to ``endpoint``.

    Parameters already in the endpoint's query are kept after ours, and win over ours when the
    names are the same.
    """
    if "?" not in endpoint:
        return endpoint + "?" + "&".join(f"{_quote(k)}={_quote(v)}" for k, v in params)
    parts = urlsplit(endpoint)
    existing = parse_qsl(parts.query, keep_blank_values=True)
    existing_names = {name for name, _ in existing}
    pairs = [(k, v) for k, v in params if k not in existing_names] + existing
    query = "&".join(f"{_quote(k)}={_quote(v)}" for k, v in pairs)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, ""))


def identity_params(
    identity: Identity,
    *,
    client_id: str = "client_id",
    object_id: str = "object_id",
    resource_id: str = "msi_res_id",
) -> list[tuple[str, str]]:
    """Query parameters naming the identity, with the source's parameter names: any extra
    ``identity_config`` entries verbatim, then the identifier."""
    params = list(identity.extra)
    names = {
        IdentityKind.CLIENT_ID: client_id,
        IdentityKind.OBJECT_ID: object_id,
        IdentityKind.RESOURCE_ID: resource_id,
    }
    if identity.kind in names and identity.value is not None:
        params.append((names[identity.kind], identity.value))
    return params


def redact_url(url: str) -> str:
    """The URL without user information; its query holds no secrets (resource and identity
    identifiers only), so it is kept."""
    parts = urlsplit(url)
    netloc = parts.hostname or ""
    if ":" in netloc:
        netloc = f"[{netloc}]"
    if parts.port is not None:
        netloc = f"{netloc}:{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))


Step = TokenRequest | FileRead
"""What a flow asks the acquisition to do: send a request, or read a local file."""

Flow = Generator[Step, object, RawResponse]
"""One attempt at a token: a generator that yields :data:`Step` values, is sent back the
:class:`~mi_credential._models.RawResponse` of each request (or the text of each file), and
returns the final response, which the acquisition then classifies and parses."""


def send(request: TokenRequest) -> Generator[Step, object, RawResponse]:
    """Within a flow, ``response = yield from send(request)``."""
    response = yield request
    assert isinstance(response, RawResponse)
    return response


def read(step: FileRead) -> Generator[Step, object, str]:
    """Within a flow, ``text = yield from read(FileRead(...))``."""
    text = yield step
    assert isinstance(text, str)
    return text


class TokenSource:
    """A hosting source: its token flow, and how to interpret its responses.

    Subclasses set ``kind``, implement :meth:`build_request`, and adjust the flow (Azure Arc's
    challenge, workload identity's federated token), parsing or error classification where
    their endpoint differs.
    """

    kind: ClassVar[ManagedIdentitySource]
    retry_policy: ClassVar[RetryPolicy] = DEFAULT_RETRY_POLICY

    def __init__(self, config: SourceConfig, identity: Identity) -> None:
        self.config = config
        self.identity = identity

    @property
    def endpoint_name(self) -> str:
        """How messages name the endpoint."""
        return f"{self.kind.label} managed identity endpoint"

    def describe_identity(self) -> str:
        """The identity used, for messages."""
        return self.identity.describe()

    # -- requests -------------------------------------------------------------------------------

    def target(
        self, scopes: Sequence[str], tenant_id: str | None, enable_cae: bool = False
    ) -> Target:
        """The cache key for a request. Managed identity endpoints take exactly one scope;
        ``tenant_id`` and ``enable_cae`` mean nothing to them.

        Raises:
            ValueError: Not exactly one scope.
        """
        if len(scopes) != 1:
            raise ValueError(
                "This credential requires exactly one scope per token request."
                if scopes
                else "At least one scope is required."
            )
        return Target(scope_to_resource(scopes[0]))

    def sent_claims(self, target: Target, claims: str | None) -> str | None:
        """The claims this source sends to its endpoint for a caller's ``claims``. Managed
        identity endpoints take none: there, claims only bypass the cache. Acquisitions that
        send the same claims for the same target are one acquisition."""
        return None

    def flow(self, target: Target, claims: str | None) -> Flow:
        """One attempt: send the token request, return its response.

        Args:
            target: What the token is for.
            claims: What :meth:`sent_claims` returned.
        """
        return (yield from send(self.build_request(target, claims=claims)))

    def build_request(
        self, target: Target, *, claims: str | None = None, assertion: str | None = None
    ) -> TokenRequest:
        """The request that asks the endpoint for a token.

        Args:
            target: What the token is for.
            claims: Claims the token must satisfy (sent only where the endpoint takes them).
            assertion: The federated token, for sources that exchange one.
        """
        raise NotImplementedError

    # -- responses ------------------------------------------------------------------------------

    def parse_response(
        self, response: RawResponse, request: TokenRequest, request_time: float
    ) -> ParsedToken:
        """Turn a 2xx response into a token.

        Args:
            response: The final response.
            request: The request it answers.
            request_time: Epoch seconds when the request was sent (``expires_in`` counts from it).

        Raises:
            InvalidTokenResponseError: The body holds no usable token.
            IdentityMismatchError: The token is for another identity than the one requested.
        """
        if response.truncated:
            raise self._invalid(response, "its body is larger than any token response")
        payload = decode_json_object(response)
        if payload is None:
            raise self._invalid(response, "its body is not a JSON object")
        token, token_type = payload.get("access_token"), payload.get("token_type")
        problem = token_problem(token, token_type)
        if problem is not None:
            raise self._invalid(response, problem)
        assert isinstance(token, str)
        expires_on = self.expiry(payload, request_time)
        if expires_on is None:
            raise self._invalid(response, "it has no usable expires_in or expires_on")
        if expires_on <= request_time:
            raise self._invalid(response, "the token it holds has already expired")
        expires_on = min(expires_on, int(request_time) + MAX_TOKEN_LIFETIME)  # never forever
        self.check_payload(payload, response)
        self.check_identity(token, response)
        return ParsedToken(
            token=token,
            expires_on=expires_on,
            refresh_on=refresh_time(request_time, expires_on, payload.get("refresh_in")),
            token_type=token_type if isinstance(token_type, str) and token_type else "Bearer",
        )

    def expiry(self, payload: Mapping[str, Any], request_time: float) -> int | None:
        """Expiry in epoch seconds of the local clock: ``expires_in`` counted from the request
        time when sent (immune to clock skew), else the absolute ``expires_on``."""
        expires_in = to_number(payload.get("expires_in"))
        if expires_in is not None:
            return int(request_time + expires_in)
        return parse_epoch(payload.get("expires_on"))

    def check_payload(self, payload: Mapping[str, Any], response: RawResponse) -> None:
        """Source-specific checks of a token payload (Azure Arc's identity echo)."""

    mismatch_hint: ClassVar[str] = (
        "The platform ignored the identity selector: check that the identity is assigned to "
        "this resource; the platform may not support selecting user-assigned identities."
    )
    """What to say when a token is for another identity than the one requested."""

    def checked_identity(self) -> tuple[IdentityKind, str] | None:
        """The identifier a token must name: the user-assigned identity's. ``None`` (nothing to
        check) for the system-assigned identity, and for one named by unknown entries of
        ``identity_config`` only."""
        identity = self.identity
        if identity.kind is IdentityKind.SYSTEM_ASSIGNED or identity.value is None:
            return None
        return identity.kind, identity.value

    def check_identity(self, token: str, response: RawResponse) -> None:
        """Refuse a token issued to another identity than the one requested: a platform that
        ignores the identity selector answers with its default identity's token. A token that
        is not a JWT, or lacks the claim, is accepted.

        Raises:
            IdentityMismatchError: The token's claim names another identifier.
        """
        checked = self.checked_identity()
        if checked is None:
            return
        kind, value = checked
        found = token_identifier(token, kind)
        if found is None or found.lower() == value.lower():
            return
        requested = self.describe_identity()
        returned = f"{kind.value}={scrub(found, limit=200)}"
        raise IdentityMismatchError(
            f"{self.endpoint_name} answered with a token for another identity: {requested} was "
            f"requested, but the token is for {returned}. {self.mismatch_hint}",
            requested=requested,
            returned=returned,
            source=self.kind,
            status_code=response.status,
            reason=response.reason,
        )

    def _invalid(self, response: RawResponse, why: str) -> InvalidTokenResponseError:
        content_type = response.header("content-type") or "none"
        return InvalidTokenResponseError(
            f"{self.endpoint_name} answered HTTP {response.status} but "
            f"{why} (Content-Type: {scrub(content_type, limit=80)}). The endpoint or a proxy in "
            "between is misbehaving.",
            source=self.kind,
            status_code=response.status,
            reason=response.reason,
        )

    def error_from_response(
        self, response: RawResponse, request: TokenRequest, *, attempts: int, elapsed: float
    ) -> ManagedIdentityError:
        """The error for a final non-2xx response."""
        code, description = describe_error(response, request.secrets)
        message = self.error_message(
            response, code, description, attempts, elapsed, self.hint(response)
        )
        return self.response_error(
            TokenRequestError, message, response, code, description, attempts, elapsed
        )

    def response_error(
        self,
        error_type: type[ManagedIdentityError],
        message: str,
        response: RawResponse,
        code: str | None,
        description: str | None,
        attempts: int,
        elapsed: float,
    ) -> ManagedIdentityError:
        """An error of ``error_type`` about a final response, with the response's facts."""
        return error_type(
            message,
            source=self.kind,
            status_code=response.status,
            reason=response.reason,
            error_code=code,
            error_description=description,
            attempts=attempts,
            elapsed=elapsed,
        )

    def hint(self, response: RawResponse) -> str:
        """What to check, given the final status."""
        status = response.status
        if status == 429:
            return "The endpoint is throttling requests; cache tokens and retry later."
        if status >= 500:
            return "The endpoint failed; it is usually transient: retry later."
        return "Check that managed identity is enabled and the resource URI is correct."

    def error_message(
        self,
        response: RawResponse,
        code: str | None,
        description: str | None,
        attempts: int,
        elapsed: float,
        hint: str,
    ) -> str:
        detail = ": ".join(part for part in (code, description) if part)
        status = f"HTTP {response.status}" + (f" {response.reason}" if response.reason else "")
        return (
            f"{self.endpoint_name} answered {status}"
            f"{' (' + detail + ')' if detail else ''} "
            f"after {_attempts(attempts)} in {elapsed:.1f} s. {hint}"
        )

    def unreachable_error(
        self, request: TokenRequest, cause: str, *, attempts: int, elapsed: float, tls: bool
    ) -> CredentialUnavailableError:
        """The error when the endpoint never answered (``tls``: no trusted connection)."""
        hint = "" if tls else f" {self.unreachable_hint()}"
        return CredentialUnavailableError(
            f"{self.endpoint_name} {redact_url(request.url)} did not "
            f"answer ({cause}) after {_attempts(attempts)} in {elapsed:.1f} s.{hint}",
            source=self.kind,
            attempts=attempts,
            elapsed=elapsed,
        )

    def unreachable_hint(self) -> str:
        return "Check that this code runs where the endpoint is reachable."


def _attempts(count: int) -> str:
    return f"{count} attempt" + ("" if count == 1 else "s")
