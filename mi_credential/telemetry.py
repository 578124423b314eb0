"""The names mi-credential's telemetry is recorded under: the instrumentation scope, the span,
the metrics and their attributes, and the histogram buckets. For dashboards, alerts and views;
importing this module loads nothing but these strings.

>>> from mi_credential import telemetry
>>> telemetry.ACQUISITION_DURATION
'mi_credential.token.acquisition.duration'

Everything recorded carries :data:`SOURCE` and :data:`IDENTITY_KIND`. The acquisition span
(:data:`ACQUISITION_SPAN`, INTERNAL, one per cache miss or refresh, never per cache hit) adds
:data:`RESOURCE`, :data:`CACHE_RESULT`, :data:`REFRESH_REASON`, :data:`TOKEN_ORIGIN`,
:data:`ATTEMPTS` and, on failure, :data:`ERROR_TYPE`; each HTTP attempt is a CLIENT span named
after its method, with the stable HTTP semantic conventions. See the README's telemetry
reference for each metric's attributes.
"""

from __future__ import annotations

__all__ = [
    "ACQUISITION_BUCKETS",
    "ACQUISITION_DURATION",
    "ACQUISITION_SPAN",
    "ATTEMPTS",
    "CACHE_RESULT",
    "COALESCED_WAITERS",
    "ERROR_TYPE",
    "HTTP_BUCKETS",
    "HTTP_CLIENT_DURATION",
    "HTTP_REQUEST_METHOD",
    "HTTP_REQUEST_RESEND_COUNT",
    "HTTP_RESPONSE_STATUS_CODE",
    "IDENTITY_KIND",
    "INSTRUMENTATION_SCOPE",
    "ORIGIN_ENDPOINT",
    "ORIGIN_SHARED_CACHE",
    "ORIGIN_SHARED_REFRESH",
    "OUTCOME",
    "REFRESH_REASON",
    "RESOURCE",
    "SCHEMA_URL",
    "SERVER_ADDRESS",
    "SERVER_PORT",
    "SHARED_CACHE_LOCK_WAITS",
    "SOURCE",
    "TIME_TO_EXPIRY",
    "TOKEN_ORIGIN",
    "TOKEN_REFRESHES",
    "TOKEN_REQUESTS",
    "URL_FULL",
]

INSTRUMENTATION_SCOPE = "mi_credential"
SCHEMA_URL = "https://opentelemetry.io/schemas/1.27.0"

# Span and metric names.
ACQUISITION_SPAN = "ManagedIdentityCredential.get_token"
ACQUISITION_DURATION = "mi_credential.token.acquisition.duration"
TOKEN_REQUESTS = "mi_credential.token.requests"
TOKEN_REFRESHES = "mi_credential.token.refreshes"
COALESCED_WAITERS = "mi_credential.token.coalesced_waiters"
TIME_TO_EXPIRY = "mi_credential.token.time_to_expiry"
SHARED_CACHE_LOCK_WAITS = "mi_credential.shared_cache.lock_waits"
HTTP_CLIENT_DURATION = "http.client.request.duration"

# Attribute names.
SOURCE = "mi_credential.source"
IDENTITY_KIND = "mi_credential.identity.kind"
RESOURCE = "mi_credential.resource"
CACHE_RESULT = "mi_credential.cache.result"
REFRESH_REASON = "mi_credential.refresh.reason"
TOKEN_ORIGIN = "mi_credential.token.origin"
ATTEMPTS = "mi_credential.attempts"
OUTCOME = "mi_credential.outcome"
ERROR_TYPE = "error.type"
HTTP_REQUEST_METHOD = "http.request.method"
HTTP_RESPONSE_STATUS_CODE = "http.response.status_code"
HTTP_REQUEST_RESEND_COUNT = "http.request.resend_count"
SERVER_ADDRESS = "server.address"
SERVER_PORT = "server.port"
URL_FULL = "url.full"

# Values of TOKEN_ORIGIN: where an acquisition's token came from. With the shared cache on
# (``shared_cache=``), a token another process stored, or one it refreshed while this process
# waited; the acquisition's CACHE_RESULT is then ``shared``.
ORIGIN_ENDPOINT = "endpoint"
ORIGIN_SHARED_CACHE = "shared_cache"
ORIGIN_SHARED_REFRESH = "shared_refresh"

#: Bucket boundaries (seconds) of the acquisition and the HTTP duration histograms.
ACQUISITION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10)
