"""Managed identity tokens for Azure SDK clients and azure-core pipelines.

:class:`BearerTokenPolicy` is a drop-in for azure-core's ``AsyncBearerTokenCredentialPolicy`` that
keeps no token of its own: the credential's cache, single-flight refresh and
stale-while-revalidate behaviour apply to every client that shares the credential. It goes where
a client takes ``authentication_policy=`` (generated clients such as ``azure-mgmt-*``, your own
``AsyncPipelineClient``); Storage, Tables and Key Vault clients take the credential only.
:func:`get_bearer_token_provider` gives a plain ``async () -> str`` for code that wants a token
string.

>>> from azure.core import AsyncPipelineClient
>>> from mi_credential import ManagedIdentityCredential
>>> from mi_credential_azure_core import BearerTokenPolicy
>>> credential = ManagedIdentityCredential()                         # doctest: +SKIP
>>> policy = BearerTokenPolicy(credential, "https://management.azure.com/.default")
>>> client = AsyncPipelineClient("https://management.azure.com", authentication_policy=policy)
"""

from ._policy import BearerTokenPolicy, TokenProvider, get_bearer_token_provider

__all__ = ["BearerTokenPolicy", "TokenProvider", "get_bearer_token_provider"]
