"""Names and numbers of the managed identity protocols, in one place.

Nothing here reads the environment: the names are looked up in a mapping passed in by the caller.
"""

from __future__ import annotations

import sys


class EnvironmentVariables:
    """Environment variable names the hosting platforms set."""

    IDENTITY_ENDPOINT = "IDENTITY_ENDPOINT"
    IDENTITY_HEADER = "IDENTITY_HEADER"
    IDENTITY_SERVER_THUMBPRINT = "IDENTITY_SERVER_THUMBPRINT"
    IMDS_ENDPOINT = "IMDS_ENDPOINT"
    MSI_ENDPOINT = "MSI_ENDPOINT"
    MSI_SECRET = "MSI_SECRET"
    AZURE_POD_IDENTITY_AUTHORITY_HOST = "AZURE_POD_IDENTITY_AUTHORITY_HOST"
    AZURE_AUTHORITY_HOST = "AZURE_AUTHORITY_HOST"
    AZURE_TENANT_ID = "AZURE_TENANT_ID"
    AZURE_CLIENT_ID = "AZURE_CLIENT_ID"
    AZURE_FEDERATED_TOKEN_FILE = "AZURE_FEDERATED_TOKEN_FILE"
    AZURE_IDENTITY_DISABLE_MULTITENANTAUTH = "AZURE_IDENTITY_DISABLE_MULTITENANTAUTH"

    #: Every variable that takes part in source detection; tests clear these.
    ALL = (
        IDENTITY_ENDPOINT,
        IDENTITY_HEADER,
        IDENTITY_SERVER_THUMBPRINT,
        IMDS_ENDPOINT,
        MSI_ENDPOINT,
        MSI_SECRET,
        AZURE_POD_IDENTITY_AUTHORITY_HOST,
        AZURE_AUTHORITY_HOST,
        AZURE_TENANT_ID,
        AZURE_CLIENT_ID,
        AZURE_FEDERATED_TOKEN_FILE,
        AZURE_IDENTITY_DISABLE_MULTITENANTAUTH,
    )


IMDS_DEFAULT_AUTHORITY = "http://169.254.169.254"
IMDS_TOKEN_PATH = "/metadata/identity/oauth2/token"

IMDS_API_VERSION = "2018-02-01"
APP_SERVICE_API_VERSION = "2019-08-01"
AZURE_ARC_API_VERSION = "2020-06-01"
SERVICE_FABRIC_API_VERSION = "2019-07-01-preview"
AZURE_ML_API_VERSION = "2017-09-01"

CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
#: Claims that announce the client is capable of Continuous Access Evaluation.
CAE_CLIENT_CAPABILITY_CLAIMS = '{"access_token":{"xms_cc":{"values":["CP1"]}}}'

#: The directory HIMDS writes its challenge key files to. Arc's 401 challenge names a file; we read
#: it only if it lies directly in this directory. A plain setting, never read from the
#: environment, so a hostile environment cannot widen it; tests point it at a temporary folder.
ARC_KEY_DIRECTORY: str | None = {
    "linux": "/var/opt/azcmagent/tokens",
    "win32": "C:\\ProgramData\\AzureConnectedMachineAgent\\Tokens",
}.get(sys.platform)
ARC_MAX_KEY_FILE_SIZE = 4096

# Time, in seconds.
DEFAULT_TIMEOUT = 90.0
"""Overall deadline of one acquisition: room for IMDS's 70 s of 410 retries and one more try."""
DEFAULT_CONNECT_TIMEOUT = 2.0
DEFAULT_READ_TIMEOUT = 30.0
#: Tokens that live at least this long are refreshed at half-life (the Azure identity rule).
HALF_LIFE_THRESHOLD = 7200
#: Shorter-lived tokens are refreshed this long before they expire.
REFRESH_BEFORE_EXPIRY = 300
#: Inside this margin before expiry a cached token is not served: callers wait for a new one.
MANDATORY_REFRESH_MARGIN = 60
#: A token is cached for at most this long, whatever its endpoint says: managed identity tokens
#: live about 24 h, so a longer claim (``expires_in: 1e300``) is a broken endpoint's, and a
#: token kept forever would never be replaced.
MAX_TOKEN_LIFETIME = 7 * 24 * 3600
#: After a failed background refresh, the next one starts no sooner than this.
REFRESH_RETRY_BACKOFF = 30.0

#: Responses larger than this are refused unread (a token response is a few KB).
MAX_RESPONSE_BYTES = 1024 * 1024
