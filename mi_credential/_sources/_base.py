"""What every source shares: building URLs, parsing token responses, describing errors. Pure."""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any, ClassVar, NamedTuple
from urllib.parse import parse_qsl, quote, urlsplit, urlunsplit

from .._constants import HALF_LIFE_THRESHOLD, REFRESH_BEFORE_EXPIRY
from .._environment import SourceConfig
from .._errors import (
    CredentialUnavailableError,
    InvalidTokenResponseError,
    ManagedIdentityError,
    TokenRequestError,
    scrub,
)
from .._models import (
    Identity,
    IdentityKind,
    ManagedIdentitySource,
    ParsedToken,
    RawResponse,
    TokenRequest,
)
from .._retry import DEFAULT_RETRY_POLICY, RetryPolicy

_DEFAULT_SUFFIX = "/.default"


class Target(NamedTuple):
    """What a token is for: the key of the cache and of single-flight.

    For managed identity endpoints ``resource`` is the resource URI derived from the one scope;
    for workload identity it is the space-joined scopes, and ``tenant_id`` the tenant.
    """

    resource: str
    tenant_id: str | None = None

    @property
    def label(self) -> str:
        """The resource for logs and telemetry: scopes are shown as resources, so a resource
        reads the same whichever source it came from."""
        return " ".join(scope_to_resource(part) for part in self.resource.split(" "))


#: Whitespace (several scopes in one string) or control characters (header/log injection).
_UNSAFE_IN_SCOPE = re.compile(r"[\s\x00-\x1f\x7f]")
#: A URI with a scheme (``https://vault.azure.net/.default``, ``api://app/.default``) or an
#: application ID (a GUID, optionally followed by ``/.default``).
_SCOPE_SHAPE = re.compile(
    r"^(?:[A-Za-z][A-Za-z0-9+.\-]*:.+|[0-9A-Fa-f]{8}(?:-[0-9A-Fa-f]{4}){3}-[0-9A-Fa-f]{12}(?:/.*)?)$"
)


def check_scope(scope: object) -> None:
    """Refuse what cannot be a scope, before anything is sent.

    Raises:
        ValueError: Not a non-empty string, whitespace or control characters inside, or neither
            a URI nor an application ID.
    """
    if not isinstance(scope, str) or not scope.strip():
        raise ValueError("Each scope must be a non-empty string.")
    if _UNSAFE_IN_SCOPE.search(scope):
        raise ValueError(
            f"Invalid scope {scope!r}: a scope contains no whitespace or control characters "
            "(pass several scopes as separate arguments)."
        )
    if not _SCOPE_SHAPE.match(scope):
        raise ValueError(
            f"Invalid scope {scope!r}: expected a resource URI such as "
            "'https://management.azure.com/.default' or an application ID."
        )


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


def decode_json_object(response: RawResponse) -> dict[str, Any] | None:
    """The body as a JSON object, or ``None`` if it is not one (empty, not JSON, not an object)."""
    if not response.body:
        return None
    try:
        value = json.loads(response.body.decode("utf-8-sig"))
    except (UnicodeDecodeError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def parse_epoch(value: object) -> int | None:
    """An absolute expiry as epoch seconds: an integer, a numeric string, or a date string in one
    of the formats the platforms send (``06/20/2019 02:57:58 +00:00``, ``1/16/2020 5:24:12 AM
    +00:00``, ISO 8601). ``None`` if it is none of those."""
    number = _number(value)
    if number is not None:
        return int(number)
    if not isinstance(value, str):
        return None
    text = value.strip()
    for fmt in ("%m/%d/%Y %H:%M:%S %z", "%m/%d/%Y %I:%M:%S %p %z"):
        try:
            return int(datetime.strptime(text, fmt).timestamp())
        except ValueError:
            continue
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return int(parsed.timestamp())


def _number(value: object) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return None
    else:
        return None
    return number if math.isfinite(number) else None


def refresh_time(request_time: float, expires_on: int, refresh_in: object = None) -> int:
    """When to refresh proactively: the server's ``refresh_in`` when usable; else half-life for
    tokens of two hours or more; else five minutes before expiry (at most half the lifetime)."""
    lifetime = expires_on - request_time
    server_hint = _number(refresh_in)
    if server_hint is not None and 0 < server_hint < lifetime:
        return int(request_time + server_hint)
    if lifetime >= HALF_LIFE_THRESHOLD:
        return int(request_time + lifetime // 2)
    return int(expires_on - min(REFRESH_BEFORE_EXPIRY, lifetime // 2))


class TokenSource:
    """A hosting source: builds its requests and interprets its responses.

    Subclasses set ``kind``, implement :meth:`build_request`, and adjust parsing or error
    classification where their endpoint differs.
    """

    kind: ClassVar[ManagedIdentitySource]
    retry_policy: ClassVar[RetryPolicy] = DEFAULT_RETRY_POLICY
    needs_assertion: ClassVar[bool] = False
    """Whether requests carry a federated token read from a file (workload identity)."""
    sends_claims: ClassVar[bool] = False
    """Whether ``claims`` are sent to the endpoint (elsewhere they only bypass the cache)."""

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

    def target(self, scopes: Sequence[str], tenant_id: str | None) -> Target:
        """The cache key for a request. Managed identity endpoints take exactly one scope.

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

    answers_challenges: ClassVar[bool] = False
    """Whether a 401 carries a challenge the source answers (Azure Arc)."""

    def challenge_path(self, response: RawResponse) -> str:
        """The key file a 401 challenge names (sources that answer challenges)."""
        raise NotImplementedError

    def authorize(self, request: TokenRequest, key: str) -> TokenRequest:
        """The request again, answering the challenge with the key file's content."""
        raise NotImplementedError

    def build_request(
        self, target: Target, *, claims: str | None = None, assertion: str | None = None
    ) -> TokenRequest:
        """The request that asks the endpoint for a token.

        Args:
            target: What the token is for.
            claims: Claims the token must satisfy (sent only where the endpoint takes them).
            assertion: The federated token, for sources that exchange one (``needs_assertion``).
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
        """
        if response.truncated:
            raise self._invalid(response, "its body is larger than any token response")
        payload = decode_json_object(response)
        if payload is None:
            raise self._invalid(response, "its body is not a JSON object")
        token = payload.get("access_token")
        if not isinstance(token, str) or not token:
            raise self._invalid(response, "it has no access_token")
        expires_on = self.expiry(payload, request_time)
        if expires_on is None:
            raise self._invalid(response, "it has no usable expires_in or expires_on")
        if expires_on <= request_time:
            raise self._invalid(response, "the token it holds has already expired")
        self.check_payload(payload, response)
        token_type = payload.get("token_type")
        return ParsedToken(
            token=token,
            expires_on=expires_on,
            refresh_on=refresh_time(request_time, expires_on, payload.get("refresh_in")),
            token_type=token_type if isinstance(token_type, str) and token_type else "Bearer",
        )

    def expiry(self, payload: Mapping[str, Any], request_time: float) -> int | None:
        """Expiry in epoch seconds of the local clock: ``expires_in`` counted from the request
        time when sent (immune to clock skew), else the absolute ``expires_on``."""
        expires_in = _number(payload.get("expires_in"))
        if expires_in is not None:
            return int(request_time + expires_in)
        return parse_epoch(payload.get("expires_on"))

    def check_payload(self, payload: Mapping[str, Any], response: RawResponse) -> None:
        """Source-specific checks of a token payload (Azure Arc's identity echo)."""

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
        return TokenRequestError(
            self.error_message(response, code, description, attempts, elapsed, self.hint(response)),
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
        self, request: TokenRequest, cause: str, *, attempts: int, elapsed: float
    ) -> CredentialUnavailableError:
        """The error when the endpoint never answered."""
        return CredentialUnavailableError(
            f"{self.endpoint_name} {redact_url(request.url)} did not "
            f"answer ({cause}) after {_attempts(attempts)} in {elapsed:.1f} s. "
            f"{self.unreachable_hint()}",
            source=self.kind,
            attempts=attempts,
            elapsed=elapsed,
        )

    def unreachable_hint(self) -> str:
        return "Check that this code runs where the endpoint is reachable."


def _attempts(count: int) -> str:
    return f"{count} attempt" + ("" if count == 1 else "s")


def describe_error(response: RawResponse, secrets: Sequence[str]) -> tuple[str | None, str | None]:
    """The endpoint's error code and description, from the shapes the platforms use:
    OAuth (``error``/``error_description``), App Service (``statusCode``/``message``) and OData
    (``error: {code, message}``). Scrubbed; nothing at all if the body carries a token."""
    payload = decode_json_object(response)
    if payload is None or "access_token" in payload:
        return None, None
    code: object = payload.get("error")
    description: object = payload.get("error_description") or payload.get("message")
    if isinstance(code, Mapping):
        description = code.get("message") or description
        code = code.get("code")
    code_text = scrub(str(code), secrets, limit=80) if code else None
    description_text = scrub(str(description), secrets) if description else None
    return code_text or None, description_text or None
