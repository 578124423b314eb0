"""``python -m mi_credential demo``: the library end to end, against the in-process emulator.

1. The credential directly: a token through each hosting source, a cache hit, fifty
   concurrent callers sharing one request, a throttled endpoint retried, and the typed error
   for an identity that is not assigned.
2. A FastAPI application (``ManagedIdentityMiddleware``, served by uvicorn) whose handler calls
   a protected API through a session signed by the aiohttp middleware.
3. An azure-core pipeline client, built as Azure SDK clients are, with ``BearerTokenPolicy``,
   calling the same protected API.

Every credential and integration records with SDK providers the demo passes explicitly; the
report, within 100 columns, shows acquisition latency per source, the cache hit ratio, a line per
metric (every series with ``--verbose``) and the span tree, and ends with what to try next.
``--html PATH`` writes it as a self-contained page too: each acquisition's span waterfall and the
latency per source. No token or secret is printed or written.

This package sits above the integrations and is never imported by the core: ``python -m
mi_credential`` finds :func:`run` through the ``demo`` entry point of the
``mi_credential.commands`` group when the command runs. It needs the ``demo`` extra
(``pip install "mi-credential[demo]"``).
"""

from ._demo import Demo, DemoOptions, run
from ._stage import DemoError

__all__ = ["Demo", "DemoError", "DemoOptions", "run"]
