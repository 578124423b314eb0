"""A local emulator of the managed identity endpoints of every hosting source.

Start it in-process and point a credential at it::

    async with Emulator() as emulator:
        credential = ManagedIdentityCredential(environ=emulator.environ("app_service"))

Needs the ``emulator`` extra (PyJWT, cryptography): ``pip install "mi-credential[emulator]"``.
"""

from ._faults import Fault, RecordedRequest
from ._server import DEFAULT_TENANT_ID, EmulatedIdentity, Emulator

__all__ = ["DEFAULT_TENANT_ID", "EmulatedIdentity", "Emulator", "Fault", "RecordedRequest"]
