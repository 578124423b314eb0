"""The errors this library raises.

Token acquisition raises only these; configuration mistakes raise :class:`ValueError` when the
credential is constructed::

    azure.core.exceptions.ClientAuthenticationError
     └── ManagedIdentityError             every token-time failure: .source, .status_code,
          │                               .error_code, .error_description, .attempts, .elapsed
          ├── CredentialUnavailableError  no usable source here, the endpoint is unreachable, or
          │                               the identity is not assigned: try another credential
          └── TokenRequestError           the endpoint refused, after any retries
               └── InvalidTokenResponseError
                    │                     a success status whose body holds no usable token
                    └── IdentityMismatchError
                                          a token for another identity than the one
                                          requested: .requested, .returned

Messages say what went wrong, where, and what to check. They never contain a token, a secret
header, key-file content or a raw response body: the endpoint's own error code and description
are included only after secrets and JWT-shaped strings are removed. The underlying exception, if
any, is chained as ``__cause__``.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable
from typing import Any

from azure.core.exceptions import ClientAuthenticationError

from ._models import ManagedIdentitySource

TROUBLESHOOTING_URL = "https://aka.ms/azsdk/python/identity/managedidentitycredential/troubleshoot"

_JWT_SHAPED = re.compile(r"eyJ[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]*")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")
_MAX_DETAIL = 300


def scrub(text: str, secrets: Iterable[str] = (), *, limit: int = _MAX_DETAIL) -> str:
    """Make endpoint-supplied text safe for a message or a log line.

    Removes the given secret values and anything shaped like a JWT, collapses control characters
    (so a hostile endpoint cannot forge log lines) and truncates to ``limit`` characters.
    """
    for secret in secrets:
        if secret:
            text = text.replace(secret, "****")
    text = _JWT_SHAPED.sub("****", text)
    text = _CONTROL.sub(" ", text).strip()
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return text


class ManagedIdentityError(ClientAuthenticationError):
    """A managed identity token could not be acquired.

    Attributes:
        source: The hosting source that was used, if one was determined.
        status_code: The last HTTP status, if the endpoint answered.
        reason: The last HTTP reason phrase, if the endpoint answered.
        error_code: The endpoint's error code (for example ``invalid_request``), if it sent one.
        error_description: The endpoint's description of the error, scrubbed of secrets.
        attempts: How many HTTP attempts were made (0 if none was).
        elapsed: Seconds from the first attempt to the failure.
    """

    def __init__(
        self,
        message: str,
        *,
        source: ManagedIdentitySource | None = None,
        status_code: int | None = None,
        reason: str | None = None,
        error_code: str | None = None,
        error_description: str | None = None,
        attempts: int = 0,
        elapsed: float = 0.0,
    ) -> None:
        super().__init__(message=message)
        self.source = source
        self.status_code = status_code
        self.reason = reason
        self.error_code = error_code
        self.error_description = error_description
        self.attempts = attempts
        self.elapsed = elapsed


class CredentialUnavailableError(ManagedIdentityError):
    """Managed identity is not available here: no source was detected, its endpoint did not
    answer, or the requested identity is not assigned to this resource.

    Credential chains treat this as "try the next credential". azure-identity's
    ``ChainedTokenCredential`` moves on only for its own ``CredentialUnavailableError``: when
    azure-identity is loaded, this error is an instance of that class too, so a chain such as
    ``ChainedTokenCredential(ManagedIdentityCredential(), AzureCliCredential())`` falls through
    as it does with azure-identity's credential. azure-identity is never imported here.
    """

    def __new__(cls, *args: Any, **kwargs: Any) -> CredentialUnavailableError:
        if cls is CredentialUnavailableError:
            cls = _chain_compatible_class() or cls
        return super().__new__(cls, *args, **kwargs)


_CHAIN_COMPATIBLE: dict[type[BaseException], type[CredentialUnavailableError]] = {}


def _chain_compatible_class() -> type[CredentialUnavailableError] | None:
    """A subclass that is also azure-identity's ``CredentialUnavailableError``, if azure-identity
    has been imported by the application."""
    identity = sys.modules.get("azure.identity")
    theirs = getattr(identity, "CredentialUnavailableError", None) if identity else None
    if not isinstance(theirs, type) or not issubclass(theirs, ClientAuthenticationError):
        return None
    compatible = _CHAIN_COMPATIBLE.get(theirs)
    if compatible is None:
        compatible = type(
            "CredentialUnavailableError",
            (CredentialUnavailableError, theirs),
            {"__module__": __name__, "__qualname__": "CredentialUnavailableError"},
        )
        _CHAIN_COMPATIBLE[theirs] = compatible
    return compatible


class TokenRequestError(ManagedIdentityError):
    """The token endpoint answered with an error, after any retries."""


class InvalidTokenResponseError(TokenRequestError):
    """The endpoint answered with a success status but no usable token (malformed JSON, no
    ``access_token``, a missing or unparseable expiry, an already expired token)."""


class IdentityMismatchError(InvalidTokenResponseError):
    """The endpoint answered with a token for another identity than the one requested: the
    platform ignored the user-assigned identity's selector (and returned, for example, the
    system-assigned identity's token). The token's ``appid`` (or ``azp``), ``oid`` or
    ``xms_mirid`` claim is compared with the client ID, object ID or resource ID requested
    (workload identity: ``appid`` or ``azp`` with the application's client ID); the token is
    not cached.

    Attributes:
        requested: The identity requested, as messages name it (``user-assigned identity
            client_id=<id>``, ``application client_id=<id>``).
        returned: The identity the token is for, with the same kind of identifier
            (``client_id=<id>``), scrubbed.
    """

    def __init__(self, message: str, *, requested: str, returned: str, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.requested = requested
        self.returned = returned
