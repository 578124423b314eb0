"""A local emulator of the managed identity endpoints of every hosting source.

Start it in-process and point a credential at it::

    async with Emulator() as emulator:
        credential = ManagedIdentityCredential(environ=emulator.environ("app_service"))

Tests wait on its events rather than sleeping: ``await emulator.wait_for_requests(n)`` returns
once ``n`` token requests have arrived, ``await emulator.wait_for_responses(n)`` once ``n`` have
been answered, and ``with emulator.hold(): ...`` keeps token responses back until the block ends
(or :meth:`Emulator.release`), so a request stays in flight for exactly as long as a test needs.

:func:`refusing_port` and :func:`hanging_port` stand for a machine without managed identity:
a loopback port where nothing listens, and one where connects hang.

Needs the ``emulator`` extra (PyJWT, cryptography): ``pip install "mi-credential[emulator]"``.
"""

try:
    from ._faults import Fault, RecordedRequest
    from ._identities import DEFAULT_TENANT_ID, EmulatedIdentity
    from ._server import Emulator
    from ._sockets import hanging_port, refusing_port
except ModuleNotFoundError as exc:  # the extra is missing: say which one, not only the module
    if (exc.name or "").partition(".")[0] not in ("jwt", "cryptography"):
        raise
    raise ModuleNotFoundError(
        "mi_credential.emulator needs the emulator extra (PyJWT and cryptography), which is "
        "not installed: pip install 'mi-credential[emulator]'",
        name=exc.name,
    ) from exc

__all__ = [
    "DEFAULT_TENANT_ID",
    "EmulatedIdentity",
    "Emulator",
    "Fault",
    "RecordedRequest",
    "hanging_port",
    "refusing_port",
]
