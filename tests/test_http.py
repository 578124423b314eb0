"""mi_credential.http: challenges, scopes and the token adapter. Table-driven; the adapter also
against the emulator on 127.0.0.1."""

from __future__ import annotations

import base64
import doctest
from typing import Any

import pytest
from azure.core.credentials import AccessToken, AccessTokenInfo
from azure.core.pipeline.policies._utils import get_challenge_parameter

import mi_credential
import mi_credential.http as http
from mi_credential import ManagedIdentitySource as S
from mi_credential.emulator import Emulator
from mi_credential.http import (
    Challenge,
    TokenAdapter,
    bearer_challenge,
    check_scope,
    claims_challenge,
    decode_claims,
    parse_challenges,
)

from .conftest import CredentialFactory

SCOPE = "https://storage.azure.com/.default"
CLAIMS = '{"access_token":{"nbf":{"essential":true,"value":"1700000000"}}}'
ENCODED = base64.urlsafe_b64encode(CLAIMS.encode()).decode()
UNPADDED = ENCODED.rstrip("=")
CAE = '{"access_token":{"nbf":{"essential":true,"value":"1726077595"}}}'
ARC_LINUX = "/var/opt/azcmagent/tokens/abc.key"
ARC_WINDOWS = "C:\\ProgramData\\AzureConnectedMachineAgent\\Tokens\\abc.key"
NOT_UTF8 = base64.urlsafe_b64encode(b"\xff\xfe").decode()


def b64(text: str | bytes, *, urlsafe: bool = True, pad: bool = False) -> str:
    raw = text.encode() if isinstance(text, str) else text
    encoded = (base64.urlsafe_b64encode if urlsafe else base64.b64encode)(raw).decode()
    return encoded if pad else encoded.rstrip("=")


def C(scheme: str, token68: str | None = None, **params: str) -> Challenge:
    return Challenge(scheme, params, token68)


def test_exports_are_explicit_and_documented() -> None:
    public = {
        name
        for name, value in vars(http).items()
        if not name.startswith("_") and getattr(value, "__module__", None) == http.__name__
    }
    assert set(http.__all__) == public
    for name in http.__all__:
        assert getattr(http, name).__doc__, name
    assert not set(http.__all__) & set(mi_credential.__all__)  # imported as mi_credential.http
    assert doctest.testmod(http).failed == 0


# -- challenges (RFC 9110 section 11.6.1) -------------------------------------------------------

PARSE_CASES: list[tuple[Any, list[Challenge]]] = [
    # One challenge, parameter values quoted or bare.
    ('Bearer realm="x"', [C("bearer", realm="x")]),
    (
        'Bearer realm="", error="insufficient_claims", claims="abc"',
        [C("bearer", realm="", error="insufficient_claims", claims="abc")],
    ),
    ("Bearer error=invalid_token", [C("bearer", error="invalid_token")]),
    (['Bearer realm="", error="invalid_token"'], [C("bearer", realm="", error="invalid_token")]),
    ("Bearer", [C("bearer")]),
    (["Bearer"], [C("bearer")]),
    ("Bearer\trealm = \"x\" ,  error =y", [C("bearer", realm="x", error="y")]),
    # Scheme and parameter names are case-insensitive; values keep their case.
    ('BEARER ERROR="X"', [C("bearer", error="X")]),
    (["bearer error=invalid_token"], [C("bearer", error="invalid_token")]),
    (['Basic realm="a"'], [C("basic", realm="a")]),
    # Several challenges in one value, and across values.
    ('Basic realm="a", Bearer error="x"', [C("basic", realm="a"), C("bearer", error="x")]),
    (['Basic realm="a", Bearer realm="b"'], [C("basic", realm="a"), C("bearer", realm="b")]),
    (
        ['Basic realm="a"', 'Bearer claims="x", error="insufficient_claims"'],
        [C("basic", realm="a"), C("bearer", claims="x", error="insufficient_claims")],
    ),
    (
        ['Digest nonce="n", qop="auth", Bearer, NTLM'],
        [C("digest", nonce="n", qop="auth"), C("bearer"), C("ntlm")],
    ),
    # Values joined across field lines form one list (RFC 9110 section 5.3).
    (['Bearer realm="a"', 'error="x"'], [C("bearer", realm="a", error="x")]),
    # token68: the challenge then takes no parameters.
    ('Negotiate abc==, Bearer error="x"', [C("negotiate", "abc=="), C("bearer", error="x")]),
    (['Negotiate abc==, Bearer realm="c"'], [C("negotiate", "abc=="), C("bearer", realm="c")]),
    ('NEGOTIATE YII=, realm="x"', [C("negotiate", "YII=")]),
    ("Basic YWxhZGRpbjpvcGVuc2VzYW1l", [C("basic", "YWxhZGRpbjpvcGVuc2VzYW1l")]),
    # Quoted strings: commas inside, backslash escapes.
    ('Bearer realm="quoted, \\"comma\\""', [C("bearer", realm='quoted, "comma"')]),
    (
        ['Bearer realm="quo\\"ted, with comma", scope="a b"'],
        [C("bearer", realm='quo"ted, with comma', scope="a b")],
    ),
    ('Bearer realm="a\\\\b"', [C("bearer", realm="a\\b")]),
    # A name given twice keeps its first value.
    ('Bearer error="a", error="b"', [C("bearer", error="a")]),
    # Azure Arc: unquoted key file paths, with "/", "\" and ":".
    (f"Basic realm={ARC_LINUX}", [C("basic", realm=ARC_LINUX)]),
    (f"Basic realm={ARC_WINDOWS}", [C("basic", realm=ARC_WINDOWS)]),
    (f'basic REALM="{ARC_LINUX}"', [C("basic", realm=ARC_LINUX)]),
    ("Basic realm=/a=b.key", [C("basic", realm="/a=b.key")]),
    (f"Bearer x={ARC_LINUX}", [C("bearer", x=ARC_LINUX)]),
    (f"Basic {ARC_LINUX}", [C("basic", ARC_LINUX)]),
    # Nothing there.
    ("", []),
    ([""], []),
    (None, []),
    ([], []),
    # Malformed parts are skipped, never raised.
    ('Bearer realm="unterminated', [C("bearer")]),
    (['realm="orphan"'], []),
    (["Bearer ,,, = realm"], [C("bearer")]),
    (', , Bearer realm=x,,', [C("bearer", realm="x")]),
    # After a malformed part, parameters are not guessed onto the challenge before it.
    ('Bearer realm="a", @@@, error="b"', [C("bearer", realm="a")]),
    ('Bearer realm="a" junk, error="b"', [C("bearer")]),
    ('Bearer realm="a"error="b"', [C("bearer")]),
    (
        'Bearer realm="a" Basic, error="insufficient_claims", claims="e30", Basic realm="b"',
        [C("bearer"), C("basic", realm="b")],
    ),
    ('Bearer realm="x", realm2="unterminated, error="y"', [C("bearer", realm="x")]),
    ("abc==, Bearer", [C("bearer")]),
    ([b"Bearer", 'Basic realm="a"'], [C("basic", realm="a")]),
]


@pytest.mark.parametrize(("headers", "expected"), PARSE_CASES)
def test_parse_challenges(headers: Any, expected: list[Challenge]) -> None:
    assert parse_challenges(headers) == expected
    bearer = next((c for c in expected if c.scheme == "bearer"), None)
    assert bearer_challenge(headers) == bearer


def test_a_challenge_is_a_value() -> None:
    challenge = C("bearer", realm="x")
    assert hash(challenge) == hash(C("bearer", realm="y"))  # hashable; params not hashed
    with pytest.raises(AttributeError):
        challenge.scheme = "basic"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("encoded", "expected"),
    [
        (b64(CAE), CAE),
        (b64(CAE, pad=True), CAE),
        (f"  {b64(CAE)}  ", CAE),
        (b64('{"a": "?>?>"}', urlsafe=False), '{"a": "?>?>"}'),
        (b64('{"a": "?>?>"}'), '{"a": "?>?>"}'),
        (b64("[1, 2]"), None),
        (b64("not json"), None),
        (b64('"a string"'), None),
        ("%%%", None),
        ("", None),
        (b64(b"\xff\xfe{}", pad=True), None),  # not UTF-8
    ],
)
def test_decode_claims(encoded: str, expected: str | None) -> None:
    assert decode_claims(encoded) == expected


@pytest.mark.parametrize(
    "headers",
    [
        f'Bearer realm="", error="insufficient_claims", claims="{ENCODED}"',
        f'Bearer realm="", error="insufficient_claims", claims="{UNPADDED}"',
        f'Bearer authorization_uri="https://login.microsoftonline.com/common/oauth2/authorize", '
        f'client_id="00000003-0000-0000-c000-000000000000", error="insufficient_claims", '
        f'claims="{UNPADDED}"',
        f'PoP nonce="n", Bearer error="insufficient_claims", claims="{UNPADDED}"',
        f"Bearer error=insufficient_claims, claims={ENCODED}",
        ['Basic realm="a"', f'Bearer error="insufficient_claims", claims="{UNPADDED}"'],
    ],
)
def test_claims_challenges_decode_as_azure_core_decodes_them(headers: str | list[str]) -> None:
    assert claims_challenge(headers) == CLAIMS
    joined = headers if isinstance(headers, str) else ", ".join(headers)
    encoded = get_challenge_parameter({"WWW-Authenticate": joined}, "Bearer", "claims")
    assert encoded is not None
    assert base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode() == CLAIMS


@pytest.mark.parametrize(
    "headers",
    [
        None,
        "",
        [],
        'Bearer error="invalid_token"',
        f'Bearer error="invalid_token", claims="{UNPADDED}"',
        f'Bearer claims="{UNPADDED}"',
        'Bearer error="insufficient_claims"',
        'Bearer error="insufficient_claims", claims=""',
        'Bearer error="insufficient_claims", claims="%%%"',
        'Bearer error="insufficient_claims", claims="%%%not base64%%%"',
        f'Bearer error="insufficient_claims", claims="{NOT_UTF8}"',
        f'Bearer error="insufficient_claims", claims="{b64("[1, 2]")}"',
        'Bearer error="insufficient_claims", claims="WzEsMl0"',
        f'Bearer error="insufficient_claims", claims="{b64("not json")}"',
        f'Basic error="insufficient_claims", claims="{UNPADDED}"',
        f'Bearer error="INSUFFICIENT_CLAIMS", claims="{UNPADDED}"',
    ],
    ids=[
        "none",
        "empty",
        "no-values",
        "other-error",
        "claims-without-error",
        "claims-only",
        "no-claims",
        "empty-claims",
        "not-base64",
        "not-base64-text",
        "not-utf8",
        "json-array",
        "json-array-unpadded",
        "not-json",
        "not-bearer",
        "error-case-differs",
    ],
)
def test_not_a_usable_claims_challenge(headers: str | list[str] | None) -> None:
    assert claims_challenge(headers) is None


# -- scopes -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scope", "message"),
    [
        ("https://vault.azure.net/.default", None),
        ("https://vault.azure.net", None),
        ("api://my-app/.default", None),
        ("00000003-0000-0000-c000-000000000000/.default", None),
        ("00000003-0000-0000-c000-000000000000", None),
        ("vault", "expected a resource URI"),
        ("00000003-0000-0000-c000/.default", "expected a resource URI"),
        ("", "non-empty string"),
        (" ", "non-empty string"),
        (None, "non-empty string"),
        (42, "non-empty string"),
        (["https://a/.default"], "non-empty string"),
        ("https://a/.default https://b/.default", "no whitespace"),
        ("https://a/\r\n.default", "no whitespace or control characters"),
        ("https://a/\x00.default", "control characters"),
    ],
)
def test_check_scope(scope: object, message: str | None) -> None:
    if message is None:
        check_scope(scope)
        return
    with pytest.raises(ValueError, match=message):
        check_scope(scope)


# -- the token adapter --------------------------------------------------------------------------


class TokenInfoOnly:
    """An ``AsyncSupportsTokenInfo`` credential that records what it is asked."""

    def __init__(self) -> None:
        self.calls: list[tuple[tuple[str, ...], dict[str, Any]]] = []

    async def get_token_info(self, *scopes: str, **kwargs: Any) -> AccessTokenInfo:
        self.calls.append((scopes, kwargs))
        return AccessTokenInfo("info-token", 1_900_000_000, refresh_on=1_800_000_000)


class GetTokenOnly:
    """An ``AsyncTokenCredential`` without ``get_token_info`` that records what it is asked."""

    def __init__(self) -> None:
        self.calls: list[tuple[tuple[str, ...], dict[str, Any]]] = []

    async def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        self.calls.append((scopes, kwargs))
        return AccessToken("legacy-token", 1_900_000_000)


class Both(TokenInfoOnly, GetTokenOnly):
    """Both methods: ``get_token_info`` is preferred."""


@pytest.mark.parametrize(
    ("kwargs", "info_call", "legacy_call"),
    [
        ({}, {}, {}),
        ({"claims": None}, {}, {}),
        ({"claims": ""}, {}, {}),
        ({"claims": CAE}, {"options": {"claims": CAE}}, {"claims": CAE}),
        ({"options": None}, {}, {}),
        ({"options": {}}, {}, {}),
        (
            {"options": {"enable_cae": True}},
            {"options": {"enable_cae": True}},
            {"enable_cae": True},
        ),
        (
            {"options": {"claims": "a", "tenant_id": "t"}, "claims": "b"},
            {"options": {"claims": "b", "tenant_id": "t"}},
            {"claims": "b", "tenant_id": "t"},
        ),
        (
            {"tenant_id": "t", "enable_cae": False},
            {"options": {"tenant_id": "t", "enable_cae": False}},
            {"tenant_id": "t", "enable_cae": False},
        ),
        ({"claims": None, "tenant_id": None}, {}, {}),
        # Keywords that are not token request options reach get_token only, as in azure-core.
        ({"logging_enable": True}, {}, {"logging_enable": True}),
        (
            {"logging_enable": True, "claims": CAE},
            {"options": {"claims": CAE}},
            {"logging_enable": True, "claims": CAE},
        ),
    ],
)
async def test_the_adapter_passes_options_as_each_protocol_takes_them(
    kwargs: dict[str, Any], info_call: dict[str, Any], legacy_call: dict[str, Any]
) -> None:
    for credential, expected, token in (
        (TokenInfoOnly(), info_call, "info-token"),
        (Both(), info_call, "info-token"),
        (GetTokenOnly(), legacy_call, "legacy-token"),
    ):
        adapter = TokenAdapter(credential)  # type: ignore[arg-type]
        info = await adapter.get_token_info(SCOPE, **kwargs)
        assert isinstance(info, AccessTokenInfo)
        assert (info.token, info.expires_on, info.token_type) == (token, 1_900_000_000, "Bearer")
        assert credential.calls == [((SCOPE,), expected)]


async def test_the_adapter_passes_every_scope() -> None:
    credential = GetTokenOnly()
    await TokenAdapter(credential).get_token_info("a://1", "a://2")  # type: ignore[arg-type]
    assert credential.calls == [(("a://1", "a://2"), {})]


@pytest.mark.parametrize(
    "credential", [object(), "a string", None, type("NotCallable", (), {"get_token": 1})()]
)
def test_a_non_credential_is_a_type_error_at_construction(credential: object) -> None:
    with pytest.raises(
        TypeError, match=r"azure-core async credential \(with get_token_info or get_token\)"
    ):
        TokenAdapter(credential)  # type: ignore[arg-type]


async def test_the_adapter_over_a_real_credential(
    emulator: Emulator, make_credential: CredentialFactory
) -> None:
    credential = make_credential(S.APP_SERVICE)
    adapter = TokenAdapter(credential)
    assert adapter.credential is credential
    assert repr(adapter) == "TokenAdapter(ManagedIdentityCredential)"
    first = await adapter.get_token_info(SCOPE)
    assert emulator.verify(first.token, audience="https://storage.azure.com")
    assert (await adapter.get_token_info(SCOPE)).token == first.token  # the credential's cache
    forced = await adapter.get_token_info(SCOPE, claims=CAE)  # claims bypass the cache once
    assert forced.token != first.token
    assert emulator.issued == 2
    with pytest.raises(ValueError, match="expected a resource URI"):
        await adapter.get_token_info("vault")
