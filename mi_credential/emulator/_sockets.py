"""Loopback ports that behave like a machine without managed identity: one where nothing
listens, and one where connects hang (a listening socket whose accept queue is full, which
stands in for a black-holed 169.254.169.254). For trying credential chains and timeouts."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator


@contextlib.contextmanager
def refusing_port() -> Iterator[int]:
    """A loopback port nothing listens on: connections to it are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    yield port


@contextlib.contextmanager
def hanging_port() -> Iterator[int]:
    """A loopback port where connects hang until they time out: it listens, never accepts,
    and its accept queue is full."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    fillers = []
    for _ in range(8):  # more than the queue holds; the connects after them hang
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(server.getsockname())
        fillers.append(filler)
    try:
        yield server.getsockname()[1]
    finally:
        for filler in fillers:
            filler.close()
        server.close()
