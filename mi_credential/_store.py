"""The token cache's second level: what a store shared beyond one credential provides.

The cache (``_cache``) reads it on a miss or a refresh and lets only the refresher it elects
ask the endpoint; the hit path never touches it.
"""

from __future__ import annotations

import contextlib
from typing import Protocol

from ._models import ParsedToken
from ._sources import Target


class TokenStore(Protocol):
    """A second cache level, shared beyond one credential (such as a per-user file store).

    Only tokens obtained without a caller's claims are read from or written to it.
    """

    async def read(self, target: Target) -> ParsedToken | None:
        """The stored token for ``target``, if any (it may be past its refresh time)."""
        ...

    async def write(self, target: Target, token: ParsedToken) -> None:
        """Store a token just obtained from the endpoint."""
        ...

    def refresher(self, target: Target) -> contextlib.AbstractAsyncContextManager[None]:
        """Hold, for the block, the right to refresh ``target`` (one holder at a time)."""
        ...
