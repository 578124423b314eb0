"""A credential created before ``os.fork()`` works in the child.

A process that forks after using credentials (gunicorn ``--preload``, multiprocessing's fork
start method) hands the child copies of objects that belong to the parent's event loops: the
shared HTTP session of each loop, with its connections, and the acquisitions in flight, asyncio
tasks of a loop that never runs in the child. Right after a fork, in the child, this module
forgets them: the loop sessions (``_transport``) and every cache's in-flight and first-token
acquisitions, so the child's first request starts its own, and the shared cache's locks, so the
child takes its own. Nothing is closed: closing would act on the parent's loops, connections
and locks. What is forgotten stays referenced for the life of the child, so no finalizer reports
it (an unclosed session, a pending task destroyed) or releases it (a lock). Cached tokens and
what the process knows of each endpoint are kept: they stay true in the child.
"""

from __future__ import annotations

import os
import sys

from . import _transport
from ._cache import live_caches

#: Objects of the parent's loops, kept from their finalizers in a forked child.
_forgotten: list[object] = []


def after_fork_in_child() -> None:
    """Forget what belongs to the parent's loops (registered with ``os.register_at_fork``)."""
    _forgotten.extend(_transport.forget_loop_sessions())
    for cache in live_caches():
        _forgotten.extend(cache.forget_flights())
    shared_cache = sys.modules.get(f"{__package__}._shared_cache")  # imported once one is used
    if shared_cache is not None:
        for store in shared_cache.live_stores():
            _forgotten.extend(store.forget_locks())


if hasattr(os, "register_at_fork"):  # not on Windows, which has no fork
    os.register_at_fork(after_in_child=after_fork_in_child)
