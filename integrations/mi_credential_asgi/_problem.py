"""RFC 9457 problem details for authentication failures, framework-free."""

from __future__ import annotations

from typing import Any

from azure.core.exceptions import ClientAuthenticationError

from mi_credential import CredentialUnavailableError, ManagedIdentityError

PROBLEM_STATUS = 503
PROBLEM_CONTENT_TYPE = "application/problem+json"

_RETRY = " Try again later."


def _category(exc: BaseException) -> tuple[str, str]:
    # azure-identity raises its own CredentialUnavailableError, also a ClientAuthenticationError:
    # matched by name so that it reads the same without importing azure-identity.
    if isinstance(exc, CredentialUnavailableError) or (
        isinstance(exc, ClientAuthenticationError)
        and type(exc).__name__ == "CredentialUnavailableError"
    ):
        return "managed_identity_unavailable", "The service's managed identity is not available."
    if isinstance(exc, ManagedIdentityError):
        return (
            "token_unavailable",
            "The service could not obtain an access token with its managed identity.",
        )
    return "authentication_failed", "The service could not authenticate to a service it uses."


def problem_details(exc: BaseException, *, expose_details: bool = False) -> dict[str, Any]:
    """The body of a 503 ``application/problem+json`` response for an authentication failure.

    The default detail is generic: it tells the client that the failure is on the server's side
    and temporary, and nothing about the server's identity, endpoints or tokens.

    Args:
        exc: The error, usually a :class:`~azure.core.exceptions.ClientAuthenticationError`.
        expose_details: Put the message of an mi-credential error in ``detail`` (it names the
            hosting source, the endpoint's answer and what to check, never a secret). Other
            errors' messages are never shown, as they may quote a response.

    Returns:
        ``type``, ``title``, ``status``, ``detail`` and ``code`` (``managed_identity_unavailable``,
        ``token_unavailable`` or ``authentication_failed``).
    """
    code, detail = _category(exc)
    if expose_details and isinstance(exc, ManagedIdentityError):
        detail = str(exc)
    else:
        detail += _RETRY
    return {
        "type": "about:blank",
        "title": "Service Unavailable",
        "status": PROBLEM_STATUS,
        "detail": detail,
        "code": code,
    }
