"""Reading WWW-Authenticate challenges: table-driven, offline."""

from __future__ import annotations

import base64

import pytest
from azure.core.pipeline.policies._utils import get_challenge_parameter

from mi_credential_azure_core._challenge import claims_from_challenge, parse_challenges

CLAIMS = '{"access_token":{"nbf":{"essential":true,"value":"1700000000"}}}'
ENCODED = base64.urlsafe_b64encode(CLAIMS.encode()).decode()
UNPADDED = ENCODED.rstrip("=")


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ('Bearer realm="x"', [("bearer", {"realm": "x"})]),
        (
            'Bearer realm="", error="insufficient_claims", claims="abc"',
            [("bearer", {"realm": "", "error": "insufficient_claims", "claims": "abc"})],
        ),
        ("Bearer error=invalid_token", [("bearer", {"error": "invalid_token"})]),
        (
            'Basic realm="a", Bearer error="x"',
            [("basic", {"realm": "a"}), ("bearer", {"error": "x"})],
        ),
        ('Negotiate abc==, Bearer error="x"', [("negotiate", {}), ("bearer", {"error": "x"})]),
        ('Bearer realm="quoted, \\"comma\\""', [("bearer", {"realm": 'quoted, "comma"'})]),
        ('BEARER ERROR="X"', [("bearer", {"error": "X"})]),
        ("Bearer", [("bearer", {})]),
        ("", []),
        ('Bearer realm="unterminated', [("bearer", {})]),
    ],
)
def test_parse_challenges(header: str, expected: list[tuple[str, dict[str, str]]]) -> None:
    assert parse_challenges(header) == expected


@pytest.mark.parametrize(
    "header",
    [
        f'Bearer realm="", error="insufficient_claims", claims="{ENCODED}"',
        f'Bearer realm="", error="insufficient_claims", claims="{UNPADDED}"',
        f'Bearer authorization_uri="https://login.microsoftonline.com/common/oauth2/authorize", '
        f'client_id="00000003-0000-0000-c000-000000000000", error="insufficient_claims", '
        f'claims="{UNPADDED}"',
        f'PoP nonce="n", Bearer error="insufficient_claims", claims="{UNPADDED}"',
        f"Bearer error=insufficient_claims, claims={ENCODED}",
    ],
)
def test_claims_challenges_decode_as_azure_core_decodes_them(header: str) -> None:
    assert claims_from_challenge(header) == CLAIMS
    encoded = get_challenge_parameter({"WWW-Authenticate": header}, "Bearer", "claims")
    assert encoded is not None
    assert base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode() == CLAIMS


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        'Bearer error="invalid_token"',
        f'Bearer error="invalid_token", claims="{UNPADDED}"',
        'Bearer error="insufficient_claims"',
        'Bearer error="insufficient_claims", claims=""',
        'Bearer error="insufficient_claims", claims="%%%"',
        'Bearer error="insufficient_claims", claims="'
        + base64.urlsafe_b64encode(b"\xff\xfe").decode()
        + '"',
        f'Basic error="insufficient_claims", claims="{UNPADDED}"',
    ],
    ids=[
        "none",
        "empty",
        "other-error",
        "claims-without-error",
        "no-claims",
        "empty-claims",
        "not-base64",
        "not-utf8",
        "not-bearer",
    ],
)
def test_not_a_usable_claims_challenge(header: str | None) -> None:
    assert claims_from_challenge(header) is None
