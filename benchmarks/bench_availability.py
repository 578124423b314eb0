"""A credential chain on a machine without managed identity: how long ``get_token`` takes to move
on to the next credential, ours and azure-identity's, side by side.

``ChainedTokenCredential(ManagedIdentityCredential(), <a credential that answers at once>)``,
IMDS pointed at a loopback port where, as on a laptop or a CI machine:

* nothing listens (the connection is refused);
* connects hang (a listening socket whose accept queue is full: a black-holed 169.254.169.254);
* the connection is accepted and never answered (full runs only).

Each chain is timed on its first call and on a second call right after. A call that has not
returned after the cap is stopped and counted at the cap (the row says so).

    python -m benchmarks.bench_availability            # full run
    python -m benchmarks.bench_availability --quick    # smoke run
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

from azure.core.credentials import AccessToken

from mi_credential import ManagedIdentityCredential
from mi_credential._constants import EnvironmentVariables
from mi_credential.emulator import hanging_port, refusing_port

from ._harness import Row, main

SCOPE = "https://storage.azure.com/.default"


class _Next:
    """The next credential of the chain: answers at once."""

    async def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        return AccessToken("next-credential", int(time.time()) + 3600)

    async def close(self) -> None:
        return None

    async def __aenter__(self) -> _Next:
        return self

    async def __aexit__(self, *args: object) -> None:
        return None


@contextlib.contextmanager
def _silent() -> Iterator[int]:
    """Accepts every connection and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    accepted: list[socket.socket] = []
    server.setblocking(False)
    loop = asyncio.get_running_loop()

    def accept() -> None:
        with contextlib.suppress(BlockingIOError):
            accepted.append(server.accept()[0])

    loop.add_reader(server.fileno(), accept)
    try:
        yield server.getsockname()[1]
    finally:
        loop.remove_reader(server.fileno())
        for connection in accepted:
            connection.close()
        server.close()


def _reference() -> Any:
    from azure.identity.aio import ManagedIdentityCredential as Reference

    return Reference()


async def _chain_calls(factory: Callable[[], Any], cap: float) -> tuple[float, float, bool]:
    """Seconds of a chain's first and second call; whether a call hit the cap."""
    from azure.identity.aio import ChainedTokenCredential

    credential = factory()
    capped = False
    times = []
    async with ChainedTokenCredential(credential, _Next()) as chain:
        for _ in range(2):
            start = time.perf_counter()
            try:
                token = await asyncio.wait_for(chain.get_token(SCOPE), cap)
                assert token.token == "next-credential"
            except asyncio.TimeoutError:
                capped = True
            times.append(min(time.perf_counter() - start, cap))
    await credential.close()
    return times[0], times[1], capped


async def run(quick: bool) -> list[Row]:
    cap = 2.0 if quick else 20.0
    machines: list[tuple[str, Callable[[], contextlib.AbstractContextManager[int]]]] = [
        ("nothing listens", refusing_port),
        ("connects hang", hanging_port),
    ]
    if not quick:
        machines.append(("accepted, never answered", _silent))
    rows = []
    for label, machine in machines:
        with machine() as port:
            for name in EnvironmentVariables.ALL:
                os.environ.pop(name, None)
            os.environ[EnvironmentVariables.AZURE_POD_IDENTITY_AUTHORITY_HOST] = (
                f"http://127.0.0.1:{port}"
            )
            ours = await _chain_calls(ManagedIdentityCredential, cap)
            reference = await _chain_calls(_reference, cap)
        for index, call in enumerate(("first call", "second call")):
            note = " (capped)" if ours[2] or reference[2] else ""
            rows.append(
                Row(
                    f"chain fall-through without managed identity: {label}",
                    f"{call}: time to reach the next credential{note}",
                    ours[index],
                    reference[index],
                    "s",
                    extra={"cap": cap, "ours_capped": ours[2], "reference_capped": reference[2]},
                )
            )
    os.environ.pop(EnvironmentVariables.AZURE_POD_IDENTITY_AUTHORITY_HOST, None)
    return rows


if __name__ == "__main__":
    main(run)
