"""The error the middleware raises itself.

Token acquisition errors come from the credential unchanged (with
:class:`mi_credential.ManagedIdentityCredential`, subclasses of azure-core's
``ClientAuthenticationError``).
"""

from __future__ import annotations


class InsecureTransportError(ValueError):
    """A request to a host configured to receive tokens uses plain http.

    Raised before anything is sent, and before the credential is asked for a token. Allow plain
    http for a host (local development only) with ``allow_http``.

    Attributes:
        host: The host the request was for.
        scheme: The URL scheme of the request (``http`` or ``ws``).
    """

    def __init__(self, host: str, scheme: str) -> None:
        self.host = host
        self.scheme = scheme
        super().__init__(
            f"Refusing to send a bearer token to {host} over plain {scheme}: tokens go only over "
            f"https. Use an https URL, or list {host!r} in allow_http (local development only)."
        )
