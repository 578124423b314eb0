"""aiohttp client middleware that signs outbound requests with managed identity tokens.

>>> from mi_credential import ManagedIdentityCredential
>>> from mi_credential_aiohttp import create_session
>>> async with ManagedIdentityCredential() as credential, create_session(  # doctest: +SKIP
...     credential, {"api.contoso.com": "api://contoso-api/.default"}
... ) as session:
...     async with session.get("https://api.contoso.com/orders") as response:
...         orders = await response.json()

Tokens go only to the configured origins, only over https (plain http only for hosts listed in
``allow_http``), never to the target of a redirect to another origin. A 401 with a Bearer
challenge is answered once with a new token when the request body can be resent.
"""

from ._errors import InsecureTransportError
from ._middleware import BearerTokenMiddleware, create_session

__all__ = ["BearerTokenMiddleware", "InsecureTransportError", "create_session"]
