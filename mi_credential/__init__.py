"""mi-credential: an async Azure managed identity credential for every hosting source.

>>> from mi_credential import ManagedIdentityCredential
>>> async with ManagedIdentityCredential() as credential:          # doctest: +SKIP
...     token = await credential.get_token("https://management.azure.com/.default")
"""

import logging

from ._credential import ManagedIdentityCredential
from ._environment import SourceConfig, detect_source
from ._errors import (
    CredentialUnavailableError,
    IdentityMismatchError,
    InvalidTokenResponseError,
    ManagedIdentityError,
    TokenRequestError,
)
from ._models import IdentityKind, ManagedIdentitySource
from ._version import __version__

# A library's logger stays silent unless the application configures logging.
logging.getLogger("mi_credential").addHandler(logging.NullHandler())

__all__ = [
    "CredentialUnavailableError",
    "IdentityKind",
    "IdentityMismatchError",
    "InvalidTokenResponseError",
    "ManagedIdentityCredential",
    "ManagedIdentityError",
    "ManagedIdentitySource",
    "SourceConfig",
    "TokenRequestError",
    "__version__",
    "detect_source",
]
