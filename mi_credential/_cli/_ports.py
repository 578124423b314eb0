"""The one-line message for a port a command cannot listen on (in use, or reserved), naming the
option that asked for it. ``main`` applies it to the ``OSError`` a command's start ends with, so
every command that listens (``emulate``, ``demo``) reports it the same way, exit code 2."""

from __future__ import annotations

import errno
import re
from collections.abc import Mapping

_IN_USE = frozenset(
    code for code in (errno.EADDRINUSE, getattr(errno, "WSAEADDRINUSE", None)) if code
)
_NOT_ALLOWED = frozenset(code for code in (errno.EACCES, getattr(errno, "WSAEACCES", None)) if code)
_UNAVAILABLE = frozenset(
    code for code in (errno.EADDRNOTAVAIL, getattr(errno, "WSAEADDRNOTAVAIL", None)) if code
)

#: The port in asyncio's "error while attempting to bind on address ('127.0.0.1', 8080): ...".
_BOUND_PORT = re.compile(r"\(\s*'[^']*',\s*(\d+)")

_ANOTHER = "choose another, or 0 for any free port"


def listen_problem(error: BaseException, ports: Mapping[str, int]) -> str | None:
    """What went wrong, in one line, if ``error`` is a failure to listen on a port.

    Args:
        error: What the command's start raised.
        ports: The command's listening options and the port each asked for (0: any free port).

    Returns:
        The message, or ``None`` if ``error`` is something else (or the command listens on
        nothing).
    """
    if not ports or not isinstance(error, OSError):
        return None
    code, text = error.errno, str(error)
    binding = "bind" in text
    if code not in _IN_USE and not (binding and code in _NOT_ALLOWED | _UNAVAILABLE):
        return None
    asked = {option: port for option, port in ports.items() if port}
    match = _BOUND_PORT.search(text)
    if match is not None:
        named = {o: p for o, p in asked.items() if p == int(match.group(1))}
        asked = named or asked
    if len(asked) != 1:
        reason = error.strerror or text
        wanted = ", ".join(f"{o} {p}" for o, p in asked.items()) or "any free port"
        return f"cannot listen on 127.0.0.1 ({wanted}): {reason}"
    ((option, port),) = asked.items()
    if code in _IN_USE:
        return f"{option}: port {port} is in use (another program listens on it): {_ANOTHER}"
    if code in _NOT_ALLOWED:
        why = " (ports below 1024 need privileges)" if port < 1024 else ""
        return f"{option}: this user may not listen on port {port}{why}: {_ANOTHER}"
    return f"{option}: cannot listen on port {port}: {error.strerror or text}"
