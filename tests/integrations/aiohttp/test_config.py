"""Which URLs get a token (pure) and configuration errors.

Bearer challenge parsing is tested with the rest of ``mi_credential.http`` in tests/test_http.py.
"""

from __future__ import annotations

from typing import Any

import pytest
from yarl import URL

import mi_credential_aiohttp
from mi_credential_aiohttp import BearerTokenMiddleware, InsecureTransportError
from mi_credential_aiohttp._origins import OriginPolicy

SCOPE = "api://contoso-api/.default"
STORAGE = "https://storage.azure.com/.default"


class Credential:
    """Enough of an azure-core credential for construction; never called in these tests."""

    async def get_token_info(self, *scopes: str, options: Any = None) -> Any:
        raise AssertionError("not called")

    async def close(self) -> None:
        return None

    async def __aenter__(self) -> Credential:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        return None


def test_all_is_complete() -> None:
    public = {n for n in vars(mi_credential_aiohttp) if not n.startswith("_")}
    assert set(mi_credential_aiohttp.__all__) == public - {"annotations"}


POLICY = OriginPolicy(
    {
        "api.contoso.com": SCOPE,
        "*.contoso.com": "api://wild/.default",
        "https://API.contoso.com:8443": "api://8443/.default",
        "*.blob.core.windows.net": STORAGE,
        "*.special.blob.core.windows.net": "api://special/.default",
        "localhost:8080": "api://local/.default",
        "[::1]:9000": "api://v6/.default",
        "bücher.example": "api://idn/.default",
    },
    allow_http=["localhost"],
)


@pytest.mark.parametrize(
    ("url", "scope"),
    [
        ("https://api.contoso.com/orders?x=1", SCOPE),
        ("https://api.contoso.com:443/", SCOPE),
        ("https://API.Contoso.COM/", SCOPE),
        ("https://api.contoso.com./", SCOPE),
        ("wss://api.contoso.com/socket", SCOPE),
        ("https://api.contoso.com:8443/", "api://8443/.default"),
        ("https://api.contoso.com:8444/", None),
        ("https://acct.blob.core.windows.net/c/b", STORAGE),
        ("https://a.b.blob.core.windows.net/", STORAGE),
        ("https://x.special.blob.core.windows.net/", "api://special/.default"),
        ("https://blob.core.windows.net/", None),
        ("https://acct.blob.core.windows.net.evil.com/", None),
        ("https://evilblob.core.windows.net/", None),
        ("https://api.contoso.com.evil.com/", None),
        ("https://notapi.contoso.com/", "api://wild/.default"),  # the exact host wins above
        ("https://contoso.com/", None),
        ("https://localhost:8080/", "api://local/.default"),
        ("http://localhost:8080/", "api://local/.default"),
        ("ws://localhost:8080/", "api://local/.default"),
        ("http://localhost:8081/", None),
        ("https://[::1]:9000/", "api://v6/.default"),
        ("https://xn--bcher-kva.example/", "api://idn/.default"),
        ("https://bücher.example/", "api://idn/.default"),
        ("http://unrelated.example/", None),
        ("ftp://api.contoso.com/", None),
    ],
)
def test_scope_for(url: str, scope: str | None) -> None:
    assert POLICY.scope_for(URL(url)) == scope
    assert POLICY.scope_for(URL(url)) == scope  # and again, from the decision cache


@pytest.mark.parametrize(
    "url",
    [
        "http://api.contoso.com/",
        "http://api.contoso.com:8443/",
        "ws://api.contoso.com/",
        "http://acct.blob.core.windows.net/",
        "http://[::1]:9000/",
    ],
)
def test_plain_http_to_a_configured_host_is_refused(url: str) -> None:
    for _ in range(2):  # the refusal is cached, and still raised
        with pytest.raises(InsecureTransportError) as raised:
            POLICY.scope_for(URL(url))
    assert raised.value.host == URL(url).raw_host


def test_the_decision_cache_is_bounded() -> None:
    policy = OriginPolicy({"*.example.com": SCOPE}, ())
    for i in range(5000):
        assert policy.scope_for(URL(f"https://h{i}.example.com/")) == SCOPE
    assert len(policy._cache) <= 4096


@pytest.mark.parametrize(
    ("scopes", "kwargs", "message"),
    [
        ({}, {}, "at least one host"),
        ({"http://api.contoso.com": SCOPE}, {}, "allow_http"),
        ({"ftp://api.contoso.com": SCOPE}, {}, "https"),
        ({"https://api.contoso.com/path": SCOPE}, {}, "path"),
        ({"https://user:pw@api.contoso.com": SCOPE}, {}, "credentials"),
        ({"api.contoso.com:99999": SCOPE}, {}, "not a valid host"),
        ({"": SCOPE}, {}, "non-empty"),
        ({"api.*.com": SCOPE}, {}, "wildcard"),
        ({"*.com.": SCOPE, "*": SCOPE}, {}, "wildcard"),
        ({"169.254.169.254": SCOPE}, {}, "metadata"),
        ({"api.contoso.com": ""}, {}, "non-empty"),
        ({"api.contoso.com": ["a", "b"]}, {}, "non-empty"),
        ({"api.contoso.com": SCOPE, "https://API.contoso.com:443": SCOPE}, {}, "same origin"),
        ({"api.contoso.com": SCOPE}, {"allow_http": ["other.example"]}, "no scope"),
        ({"api.contoso.com": SCOPE}, {"allow_http": "api.contoso.com"}, "collection"),
        ({"api.contoso.com": SCOPE}, {"allow_http": ["api.contoso.com:80"]}, "host only"),
        ({"api.contoso.com": SCOPE}, {"allow_http": ["http://api.contoso.com"]}, "host only"),
        (SCOPE, {}, "hosts="),
        (SCOPE, {"hosts": "api.contoso.com"}, "hosts="),
        (SCOPE, {"hosts": []}, "at least one host"),
        ({"api.contoso.com": SCOPE}, {"hosts": ["api.contoso.com"]}, "only with a single"),
        (["api.contoso.com"], {}, "mapping"),
    ],
)
def test_bad_configuration_is_a_value_error(scopes: Any, kwargs: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        BearerTokenMiddleware(Credential(), scopes, **kwargs)


def test_a_wildcard_allow_http_host_must_be_covered() -> None:
    policy = OriginPolicy({"*.dev.test": SCOPE}, allow_http=["api.dev.test"])
    assert policy.scope_for(URL("http://api.dev.test/")) == SCOPE
    with pytest.raises(InsecureTransportError):
        policy.scope_for(URL("http://web.dev.test/"))


def test_a_non_credential_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="azure-core async credential"):
        BearerTokenMiddleware(object(), {"api.contoso.com": SCOPE})  # type: ignore[arg-type]


def test_repr_names_origins_and_scopes() -> None:
    middleware = BearerTokenMiddleware(Credential(), {"api.contoso.com": SCOPE})
    assert repr(middleware) == f"BearerTokenMiddleware({{'api.contoso.com': '{SCOPE}'}})"


def test_a_configured_host_on_another_port_is_warned_about_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """``{"127.0.0.1": scope}`` means port 443 (80 for plain http): a request to the API on
    port 9100 goes out unsigned, and the log says why, once."""
    policy = OriginPolicy({"127.0.0.1": "api://orders/.default"}, allow_http=["127.0.0.1"])
    for _ in range(3):
        assert policy.scope_for(URL("http://127.0.0.1:9100/orders")) is None
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1
    assert "http://127.0.0.1:9100 gets no token" in warnings[0] and "port 80" in warnings[0]
    assert policy.scope_for(URL("http://127.0.0.1/orders")) == "api://orders/.default"
    assert policy.scope_for(URL("https://other.example:9100/")) is None  # another host: silent
    assert len([r for r in caplog.records if r.levelname == "WARNING"]) == 1
