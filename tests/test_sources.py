"""The sans-IO protocol layer, offline: requests built per source, responses parsed into tokens
or typed errors."""

from __future__ import annotations

import base64
import json
from urllib.parse import parse_qsl, urlsplit

import pytest

from mi_credential import (
    CredentialUnavailableError,
    IdentityMismatchError,
    InvalidTokenResponseError,
    ManagedIdentityError,
    TokenRequestError,
)
from mi_credential import ManagedIdentitySource as S
from mi_credential._environment import SourceConfig, build_identity
from mi_credential._models import FileRead, LocalFile, RawResponse, TokenRequest
from mi_credential._sources import Target, create_source, scope_to_resource
from mi_credential._sources._base import build_url
from mi_credential._sources._parse import (
    MAX_CLAIMS_SEGMENT,
    decode_jwt_claims,
    parse_epoch,
    refresh_time,
    token_identifier,
)
from mi_credential._sources.workload_identity import merge_cae_claims

NOW = 1_800_000_000
CONFIGS = {
    S.IMDS: SourceConfig(S.IMDS, "http://169.254.169.254/metadata/identity/oauth2/token", "t"),
    S.APP_SERVICE: SourceConfig(S.APP_SERVICE, "http://127.0.0.1:41234/msi/token", "t", secret="sek"),
    S.AZURE_ARC: SourceConfig(S.AZURE_ARC, "http://localhost:40342/metadata/identity/oauth2/token", "t"),
    S.SERVICE_FABRIC: SourceConfig(
        S.SERVICE_FABRIC, "https://10.0.0.4:2377/metadata/identity/oauth2/token", "t",
        secret="sek", thumbprint="ab" * 20,
    ),
    S.AZURE_ML: SourceConfig(S.AZURE_ML, "http://127.0.0.1:46808/", "t", secret="sek"),
    S.CLOUD_SHELL: SourceConfig(S.CLOUD_SHELL, "http://localhost:50342/oauth2/token", "t"),
    S.WORKLOAD_IDENTITY: SourceConfig(
        S.WORKLOAD_IDENTITY, "https://login.microsoftonline.com", "t",
        tenant_id="tenant", client_id="app", token_file="/f",
    ),
}


def request_for(source: S, client_id=None, identity_config=None, scope="https://r/.default"):
    src = create_source(CONFIGS[source], build_identity(client_id, identity_config))
    return src.build_request(src.target([scope], None), assertion="assertion-jwt")


def query(request: TokenRequest) -> list[tuple[str, str]]:
    return parse_qsl(urlsplit(request.url).query)


@pytest.mark.parametrize(
    ("source", "client_id", "config", "expected_params"),
    [
        (S.IMDS, None, None, [("api-version", "2018-02-01"), ("resource", "https://r")]),
        (S.IMDS, "cid", None, [("api-version", "2018-02-01"), ("resource", "https://r"), ("client_id", "cid")]),
        (S.IMDS, None, {"object_id": "oid"}, [("api-version", "2018-02-01"), ("resource", "https://r"), ("object_id", "oid")]),
        (S.IMDS, None, {"resource_id": "/s/r"}, [("api-version", "2018-02-01"), ("resource", "https://r"), ("msi_res_id", "/s/r")]),
        (S.IMDS, "cid", {"mi_res_id": "/x"}, [("api-version", "2018-02-01"), ("resource", "https://r"), ("mi_res_id", "/x"), ("client_id", "cid")]),
        (S.APP_SERVICE, None, None, [("api-version", "2019-08-01"), ("resource", "https://r")]),
        (S.APP_SERVICE, "cid", None, [("api-version", "2019-08-01"), ("resource", "https://r"), ("client_id", "cid")]),
        (S.APP_SERVICE, None, {"object_id": "oid"}, [("api-version", "2019-08-01"), ("resource", "https://r"), ("object_id", "oid")]),
        (S.APP_SERVICE, None, {"resource_id": "/s/r"}, [("api-version", "2019-08-01"), ("resource", "https://r"), ("mi_res_id", "/s/r")]),
        (S.AZURE_ARC, None, None, [("api-version", "2020-06-01"), ("resource", "https://r")]),
        (S.AZURE_ARC, None, {"resource_id": "/s/r"}, [("api-version", "2020-06-01"), ("resource", "https://r"), ("msi_res_id", "/s/r")]),
        (S.SERVICE_FABRIC, None, None, [("api-version", "2019-07-01-preview"), ("resource", "https://r")]),
        (S.AZURE_ML, None, None, [("api-version", "2017-09-01"), ("resource", "https://r")]),
        (S.AZURE_ML, "cid", None, [("api-version", "2017-09-01"), ("resource", "https://r"), ("clientid", "cid")]),
        (S.AZURE_ML, None, {"object_id": "oid"}, [("api-version", "2017-09-01"), ("resource", "https://r"), ("object_id", "oid")]),
        (S.AZURE_ML, None, {"resource_id": "/s/r"}, [("api-version", "2017-09-01"), ("resource", "https://r"), ("msi_res_id", "/s/r")]),
    ],
)
def test_get_requests(source, client_id, config, expected_params) -> None:
    request = request_for(source, client_id, config)
    assert request.method == "GET"
    assert request.url.split("?")[0] == CONFIGS[source].endpoint
    assert query(request) == expected_params


def test_headers_and_secrets_per_source() -> None:
    assert request_for(S.IMDS).headers == (("Metadata", "true"),)
    assert request_for(S.AZURE_ARC).headers == (("Metadata", "true"),)
    app = request_for(S.APP_SERVICE)
    assert app.headers == (("X-IDENTITY-HEADER", "sek"),)
    assert app.secrets == ("sek",)
    sf = request_for(S.SERVICE_FABRIC)
    assert sf.headers == (("Secret", "sek"),)
    assert sf.tls_thumbprint == "ab" * 20
    assert request_for(S.AZURE_ML).headers == (("secret", "sek"),)
    assert request_for(S.IMDS).secrets == ()


def test_query_values_are_percent_encoded() -> None:
    request = request_for(S.IMDS, scope="https://r/path?x=1&y=#frag/.default")
    assert "resource=https%3A%2F%2Fr%2Fpath%3Fx%3D1%26y%3D%23frag" in request.url
    assert ("resource", "https://r/path?x=1&y=#frag") in query(request)


def test_endpoint_query_is_kept_and_wins() -> None:
    url = build_url("http://h/token?api-version=2099&x=1", [("api-version", "1"), ("resource", "r")])
    assert parse_qsl(urlsplit(url).query) == [("resource", "r"), ("api-version", "2099"), ("x", "1")]


def test_cloud_shell_posts_a_form() -> None:
    request = request_for(S.CLOUD_SHELL)
    assert request.method == "POST"
    assert request.url == CONFIGS[S.CLOUD_SHELL].endpoint
    assert request.headers == (("Metadata", "true"),)
    assert request.form == (("resource", "https://r"),)


def test_cloud_shell_extra_identity_config_becomes_form_fields() -> None:
    src = create_source(CONFIGS[S.CLOUD_SHELL], build_identity(None, {"mi_res_id": "x"}))
    request = src.build_request(Target("https://r"))
    assert request.form == (("resource", "https://r"), ("mi_res_id", "x"))


@pytest.mark.parametrize(("client_id", "config"), [("cid", None), (None, {"object_id": "o"})])
def test_cloud_shell_rejects_user_assigned(client_id, config) -> None:
    with pytest.raises(ValueError, match="cloud shell"):
        create_source(CONFIGS[S.CLOUD_SHELL], build_identity(client_id, config))


@pytest.mark.parametrize(("client_id", "config"), [("cid", None), (None, {"mi_res_id": "o"})])
def test_service_fabric_refuses_user_assigned_without_a_request(client_id, config) -> None:
    src = create_source(CONFIGS[S.SERVICE_FABRIC], build_identity(client_id, config))
    with pytest.raises(ManagedIdentityError, match="not supported by the Service Fabric"):
        src.build_request(Target("https://r"))


def test_workload_identity_exchange() -> None:
    request = request_for(S.WORKLOAD_IDENTITY)
    assert request.method == "POST"
    assert request.url == "https://login.microsoftonline.com/tenant/oauth2/v2.0/token"
    assert request.form == (
        ("client_assertion", "assertion-jwt"),
        ("client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"),
        ("client_id", "app"),
        ("grant_type", "client_credentials"),
        ("scope", "https://r/.default"),
    )
    assert request.secrets == ("assertion-jwt",)


def test_workload_identity_scopes_tenants_and_claims() -> None:
    src = create_source(
        CONFIGS[S.WORKLOAD_IDENTITY], build_identity("explicit", None),
        additionally_allowed_tenants=["other"],
    )
    target = src.target(["a/.default", "b/.default"], "other")
    assert target == Target("a/.default b/.default", "other")
    request = src.build_request(target, claims='{"x":1}', assertion="a")
    assert dict(request.form or ())["client_id"] == "explicit"
    assert dict(request.form or ())["claims"] == '{"x":1}'
    assert request.url.endswith("/other/oauth2/v2.0/token")
    with pytest.raises(ManagedIdentityError, match="not configured to acquire tokens for tenant"):
        src.target(["a"], "stranger")


def test_workload_identity_requires_a_client_id() -> None:
    config = SourceConfig(S.WORKLOAD_IDENTITY, "https://login", "t", tenant_id="t", token_file="/f")
    with pytest.raises(ValueError, match="no client ID was provided"):
        create_source(config, build_identity(None, None))
    with pytest.raises(ValueError, match="cannot be honoured"):
        create_source(CONFIGS[S.WORKLOAD_IDENTITY], build_identity(None, {"object_id": "o"}))


def test_cae_claims_merge() -> None:
    assert json.loads(merge_cae_claims(None)) == {"access_token": {"xms_cc": {"values": ["CP1"]}}}
    merged = json.loads(merge_cae_claims('{"access_token": {"nbf": {"essential": true}}}'))
    assert merged == {"access_token": {"nbf": {"essential": True}, "xms_cc": {"values": ["CP1"]}}}
    with pytest.raises(ValueError, match="JSON object"):
        merge_cae_claims("[1]")


@pytest.mark.parametrize(
    ("scopes", "message"),
    [([], "At least one scope"), (["a", "b"], "exactly one scope")],
)
def test_managed_identity_takes_one_scope(scopes, message) -> None:
    src = create_source(CONFIGS[S.IMDS], build_identity(None, None))
    with pytest.raises(ValueError, match=message):
        src.target(scopes, None)


@pytest.mark.parametrize(
    ("scope", "resource"),
    [
        ("https://r/.default", "https://r"),
        ("https://r//.default", "https://r/"),
        ("api://x/.default", "api://x"),
        ("https://r/.DEFAULT", "https://r/.DEFAULT"),
        ("https://r/user_impersonation", "https://r/user_impersonation"),
        ("00000003-0000-0000-c000-000000000000", "00000003-0000-0000-c000-000000000000"),
    ],
)
def test_scope_to_resource(scope, resource) -> None:
    assert scope_to_resource(scope) == resource


# -- parsing --------------------------------------------------------------------------------------


def response(status=200, body=None, content_type="application/json", headers=None) -> RawResponse:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode() if body is not None else b""
    return RawResponse(status, "OK", {"content-type": content_type, **(headers or {})}, raw)


def parse(source: S, resp: RawResponse, client_id=None, config=None):
    src = create_source(CONFIGS[source], build_identity(client_id, config))
    request = src.build_request(src.target(["https://r/.default"], None), assertion="a")
    return src.parse_response(resp, request, NOW)


@pytest.mark.parametrize(
    ("body", "expires_on", "refresh_on", "token_type"),
    [
        ({"access_token": "T", "expires_in": "86400"}, NOW + 86400, NOW + 43200, "Bearer"),
        ({"access_token": "T", "expires_in": 3600}, NOW + 3600, NOW + 3300, "Bearer"),
        ({"access_token": "T", "expires_in": 600}, NOW + 600, NOW + 300, "Bearer"),
        ({"access_token": "T", "expires_in": 120}, NOW + 120, NOW + 60, "Bearer"),
        ({"access_token": "T", "expires_on": str(NOW + 7200)}, NOW + 7200, NOW + 3600, "Bearer"),
        ({"access_token": "T", "expires_on": NOW + 7200, "token_type": "PoP"}, NOW + 7200, NOW + 3600, "PoP"),
        ({"access_token": "T", "expires_on": f"{NOW + 7200}.5"}, NOW + 7200, NOW + 3600, "Bearer"),
        ({"access_token": "T", "expires_in": 86400, "refresh_in": 600}, NOW + 86400, NOW + 600, "Bearer"),
        ({"access_token": "T", "expires_in": 86400, "refresh_in": "600"}, NOW + 86400, NOW + 600, "Bearer"),
        ({"access_token": "T", "expires_in": 3600, "refresh_in": 99999}, NOW + 3600, NOW + 3300, "Bearer"),
        # expires_in (relative to the request) is preferred: immune to clock skew
        ({"access_token": "T", "expires_in": "3600", "expires_on": "1"}, NOW + 3600, NOW + 3300, "Bearer"),
        # the resource need not be echoed, and an odd echo does not matter
        ({"access_token": "T", "expires_in": 3600, "resource": "https://other/"}, NOW + 3600, NOW + 3300, "Bearer"),
    ],
)
def test_token_parsing(body, expires_on, refresh_on, token_type) -> None:
    token = parse(S.IMDS, response(body=body))
    assert (token.token, token.expires_on, token.refresh_on, token.token_type) == (
        "T", expires_on, refresh_on, token_type
    )


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1800000000, 1800000000),
        ("1800000000", 1800000000),
        ("06/20/2019 02:57:58 +00:00", 1560999478),
        ("1/16/2020 5:24:12 AM +00:00", 1579152252),
        ("1/16/2020 5:24:12 PM +00:00", 1579195452),
        ("2019-06-20T02:57:58Z", 1560999478),
        ("2019-06-20T02:57:58+00:00", 1560999478),
        ("nonsense", None),
        (None, None),
        (True, None),
        ("inf", None),
    ],
)
def test_expires_on_formats(value, expected) -> None:
    assert parse_epoch(value) == expected


def test_azure_ml_date_expiry() -> None:
    body = {"access_token": "T", "expires_on": "06/20/2030 02:57:58 +00:00"}
    src = create_source(CONFIGS[S.AZURE_ML], build_identity(None, None))
    request_time = 1908154678 - 86400  # a day before: within the longest lifetime believed
    token = src.parse_response(response(body=body), src.build_request(Target("r")), request_time)
    assert token.expires_on == 1908154678


@pytest.mark.parametrize(
    ("resp", "why"),
    [
        (response(body=b""), "not a JSON object"),
        (response(body=b"{}"), "no access_token"),
        (response(body=b"null"), "not a JSON object"),
        (response(body=b'{"access_token": "T", "expi'), "not a JSON object"),
        (response(body=b"<html>proxy</html>", content_type="text/html"), "not a JSON object"),
        (response(body=b"\xff\xfe"), "not a JSON object"),
        (response(body={"access_token": "", "expires_in": 1}), "no access_token"),
        (response(body={"access_token": 5, "expires_in": 1}), "no access_token"),
        (response(body={"access_token": "CANARY-TOKEN"}), "no usable expires_in or expires_on"),
        (response(body={"access_token": "CANARY-TOKEN", "expires_on": "soon"}), "no usable expires_in"),
        (response(body={"access_token": "CANARY-TOKEN", "expires_in": 0}), "already expired"),
        (response(body={"access_token": "CANARY-TOKEN", "expires_in": -60}), "already expired"),
        (response(body={"access_token": "CANARY-TOKEN", "expires_on": NOW - 1}), "already expired"),
        (RawResponse(200, "OK", {}, b"", truncated=True), "larger than any token response"),
    ],
)
def test_unusable_success_bodies(resp, why) -> None:
    with pytest.raises(InvalidTokenResponseError, match=why) as caught:
        parse(S.APP_SERVICE, resp)
    error = caught.value
    assert error.status_code == 200
    assert "CANARY-TOKEN" not in str(error) and "CANARY-TOKEN" not in repr(error)


def test_arc_requires_the_user_assigned_identity_echo() -> None:
    body = {"access_token": "T", "expires_in": 3600, "client_id": "CID"}
    assert parse(S.AZURE_ARC, response(body=body), client_id="cid").token == "T"
    with pytest.raises(ManagedIdentityError, match="did not confirm the requested user-assigned"):
        parse(S.AZURE_ARC, response(body={**body, "client_id": "other"}), client_id="cid")
    with pytest.raises(ManagedIdentityError, match="did not confirm"):
        parse(S.AZURE_ARC, response(body=body), config={"resource_id": "/r"})
    ok = {**body, "mi_res_id": "/R"}
    assert parse(S.AZURE_ARC, response(body=ok), config={"resource_id": "/r"}).token == "T"
    assert parse(S.AZURE_ARC, response(body={**body, "client_id": "x"})).token == "T"


@pytest.mark.parametrize(
    ("header", "ok"),
    [
        ("Basic realm=/var/opt/azcmagent/tokens/a.key", True),
        ('basic REALM="/var/opt/azcmagent/tokens/a.key"', True),
        (None, False),
        ("", False),
        ("Bearer x=/var/opt/azcmagent/tokens/a.key", False),
        ("Basic /var/opt/azcmagent/tokens/a.key", False),
        ("Basic realm=/a=b.key", False),
    ],
)
def test_arc_challenge_header(header, ok) -> None:
    src = create_source(CONFIGS[S.AZURE_ARC], build_identity(None, None))
    headers = {} if header is None else {"www-authenticate": header}
    resp = RawResponse(401, "Unauthorized", headers, b"")
    if ok:
        assert src.challenge_path(resp) == "/var/opt/azcmagent/tokens/a.key"
    else:
        with pytest.raises(ManagedIdentityError, match="WWW-Authenticate"):
            src.challenge_path(resp)


# -- flows: one attempt, stepped by hand ----------------------------------------------------------

ARC_CHALLENGE = RawResponse(401, "Unauthorized", {"www-authenticate": "Basic realm=/keys/a.key"})
OK = RawResponse(200, "OK", {}, b"{}")


def source_for(source: S, **config):
    return create_source(CONFIGS[source]._replace(**config), build_identity(None, None))


@pytest.mark.parametrize("source", [s for s in S if s not in (S.AZURE_ARC, S.WORKLOAD_IDENTITY)])
def test_a_plain_flow_sends_one_request_and_returns_its_response(source: S) -> None:
    src = source_for(source)
    target = src.target(["https://r/.default"], None)
    flow = src.flow(target, None)
    request = next(flow)
    assert request == src.build_request(target)
    with pytest.raises(StopIteration) as done:
        flow.send(ARC_CHALLENGE)  # whatever the status: classifying it is not the flow's job
    assert done.value.value is ARC_CHALLENGE


def test_the_arc_flow_answers_a_challenge_once_with_the_key_file() -> None:
    src = source_for(S.AZURE_ARC, key_directory="/keys")
    flow = src.flow(Target("https://r"), None)
    first = next(flow)
    assert isinstance(first, TokenRequest) and "Authorization" not in dict(first.headers)
    step = flow.send(ARC_CHALLENGE)
    assert step == FileRead(LocalFile.ARC_KEY, "/keys/a.key", "/keys")
    answered = flow.send("the-key")
    assert isinstance(answered, TokenRequest)
    assert dict(answered.headers)["Authorization"] == "Basic the-key"
    assert "the-key" in answered.secrets and "the-key" not in repr(answered)
    assert answered.url == first.url
    with pytest.raises(StopIteration) as done:
        flow.send(ARC_CHALLENGE)  # a second challenge is not answered again
    assert done.value.value is ARC_CHALLENGE


def test_the_arc_flow_returns_any_other_first_answer() -> None:
    flow = source_for(S.AZURE_ARC).flow(Target("https://r"), None)
    next(flow)
    with pytest.raises(StopIteration) as done:
        flow.send(OK)
    assert done.value.value is OK


def test_the_workload_identity_flow_reads_the_federated_token_then_exchanges_it() -> None:
    src = source_for(S.WORKLOAD_IDENTITY)
    target = src.target(["https://r/.default"], None, enable_cae=True)
    claims = src.sent_claims(target, None)
    assert claims == '{"access_token":{"xms_cc":{"values":["CP1"]}}}'
    flow = src.flow(target, claims)
    assert next(flow) == FileRead(LocalFile.FEDERATED_TOKEN, "/f")
    request = flow.send("federated-jwt")
    assert isinstance(request, TokenRequest)
    form = dict(request.form or ())
    assert form["client_assertion"] == "federated-jwt" and form["claims"] == claims
    assert "federated-jwt" in request.secrets
    with pytest.raises(StopIteration) as done:
        flow.send(OK)
    assert done.value.value is OK


def test_claims_are_sent_by_workload_identity_only() -> None:
    wi = source_for(S.WORKLOAD_IDENTITY)
    plain = wi.target(["https://r/.default"], None)
    cae = wi.target(["https://r/.default"], None, enable_cae=True)
    assert plain != cae  # CAE-capable tokens are cached apart
    assert wi.sent_claims(plain, '{"a":1}') == '{"a":1}'
    assert wi.sent_claims(plain, "") is None
    assert wi.sent_claims(cae, '{"a":1}') == '{"a":1,"access_token":{"xms_cc":{"values":["CP1"]}}}'
    imds = source_for(S.IMDS)
    target = imds.target(["https://r/.default"], None, enable_cae=True)
    assert target == Target("https://r")  # CAE means nothing to managed identity endpoints
    assert imds.sent_claims(target, '{"a":1}') is None


# -- errors ---------------------------------------------------------------------------------------


def error_for(source: S, resp: RawResponse, client_id=None, config=None) -> ManagedIdentityError:
    src = create_source(CONFIGS[source], build_identity(client_id, config))
    request = src.build_request(src.target(["https://r/.default"], None), assertion="a")
    return src.error_from_response(resp, request, attempts=3, elapsed=4.25)


def test_imds_400_says_system_assigned_or_which_user_assigned_identity() -> None:
    resp = response(400, {"error": "invalid_request", "error_description": "Identity not found"})
    system = error_for(S.IMDS, resp)
    assert isinstance(system, CredentialUnavailableError)
    assert "No system-assigned managed identity is enabled" in str(system)
    assert "Identity not found" in str(system)
    user = error_for(S.IMDS, resp, client_id="CID-1")
    assert isinstance(user, CredentialUnavailableError)
    assert "user-assigned identity client_id=CID-1 is not assigned" in str(user)
    assert (user.status_code, user.error_code, user.error_description, user.attempts) == (
        400, "invalid_request", "Identity not found", 3
    )


def test_imds_400_invalid_resource_is_not_unavailable() -> None:
    resp = response(400, {"error": "invalid_resource", "error_description": "AADSTS500011: no"})
    error = error_for(S.IMDS, resp)
    assert type(error) is TokenRequestError
    assert "invalid_resource" in str(error)


def test_imds_unreachable_hint_blames_the_machine_only_for_the_default_address() -> None:
    request = request_for(S.IMDS)
    default = create_source(CONFIGS[S.IMDS], build_identity(None, None))
    error = default.unreachable_error(
        request, "connection failed", attempts=2, elapsed=0.2, tls=False
    )
    assert "probably not running on an Azure VM" in str(error)
    pod = CONFIGS[S.IMDS]._replace(endpoint="http://127.0.0.1:2579/metadata/identity/oauth2/token")
    overridden = create_source(pod, build_identity(None, None))
    error = overridden.unreachable_error(
        request, "connection failed", attempts=2, elapsed=0.2, tls=False
    )
    assert "AZURE_POD_IDENTITY_AUTHORITY_HOST" in str(error)
    assert "Azure VM" not in str(error)


def test_imds_403_unreachable_network_is_unavailable() -> None:
    body = {"error": "forbidden", "error_description": "A socket operation was attempted to an unreachable network"}
    assert isinstance(error_for(S.IMDS, response(403, body)), CredentialUnavailableError)
    # Docker Desktop's proxy says it in plain text.
    text = (
        b"connecting to 169.254.169.254:80: dial tcp 169.254.169.254:80: connectex: "
        b"A socket operation was attempted to an unreachable network."
    )
    error = error_for(S.IMDS, RawResponse(403, "Forbidden", {"content-type": "text/plain"}, text))
    assert isinstance(error, CredentialUnavailableError) and error.status_code == 403
    assert "IMDS is unreachable from here" in str(error) and "unreachable network" in str(error)
    # Elsewhere, and for other refusals, a 403 is a refusal.
    plain = RawResponse(403, "Forbidden", {"content-type": "text/plain"}, b"forbidden")
    assert type(error_for(S.IMDS, plain)) is TokenRequestError
    assert type(error_for(S.APP_SERVICE, RawResponse(403, "Forbidden", {}, text))) is TokenRequestError


@pytest.mark.parametrize(
    ("body", "code", "description"),
    [
        ({"statusCode": 400, "message": "Unable to load the proper Managed Identity."}, None, "Unable to load the proper Managed Identity."),
        ({"error": {"code": "SecretHeaderNotFound", "message": "Secret is not found"}}, "SecretHeaderNotFound", "Secret is not found"),
        ({"error": "invalid_client", "error_description": "AADSTS700213: no match"}, "invalid_client", "AADSTS700213: no match"),
        (b"<html>gateway</html>", None, None),
        ({"access_token": "CANARY-TOKEN", "error": "weird"}, None, None),
        ({"error": "x", "error_description": "leaks eyJhbGciOi.eyJzdWIiOi.c2lnbmF0dXJl and sek"}, "x", "leaks **** and ****"),
        ({"error": "x", "error_description": "line\r\nFAKE LOG LINE"}, "x", "line FAKE LOG LINE"),
        ({"error": "x", "error_description": "y" * 1000}, "x", "y" * 297 + "..."),
    ],
)
def test_error_details_are_extracted_and_scrubbed(body, code, description) -> None:
    error = error_for(S.APP_SERVICE, response(500, body))
    assert type(error) is TokenRequestError
    assert (error.error_code, error.error_description) == (code, description)
    assert "HTTP 500" in str(error) and "after 3 attempts in 4.2 s" in str(error)
    assert "CANARY-TOKEN" not in str(error) and "sek" not in str(error)


@pytest.mark.parametrize(
    ("status", "hint"),
    [
        (401, "IDENTITY_HEADER was refused"),
        (429, "throttling"),
        (503, "transient"),
        (404, "identity assigned"),
    ],
)
def test_app_service_hints(status, hint) -> None:
    assert hint in str(error_for(S.APP_SERVICE, response(status, {})))


def test_workload_identity_errors_name_entra_and_the_application() -> None:
    error = error_for(S.WORKLOAD_IDENTITY, response(401, {"error": "invalid_client", "error_description": "AADSTS700213"}))
    assert str(error).startswith("Microsoft Entra ID answered HTTP 401")
    assert "federated identity credential of application app" in str(error)


def test_refresh_time_rules() -> None:
    assert refresh_time(NOW, NOW + 86400) == NOW + 43200
    assert refresh_time(NOW, NOW + 7200) == NOW + 3600
    assert refresh_time(NOW, NOW + 7199) == NOW + 7199 - 300
    # Two hours asked for at a fractional second: the whole-second expiry is 7199.3 s away.
    assert refresh_time(NOW + 0.7, NOW + 7200) == NOW + 3599
    assert refresh_time(NOW, NOW + 100) == NOW + 50
    assert refresh_time(NOW, NOW + 86400, 60) == NOW + 60
    assert refresh_time(NOW, NOW + 86400, "bad") == NOW + 43200


# -- the identity a token is for ------------------------------------------------------------------


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


JWT_HEADER = b64url(b'{"alg":"RS256","typ":"JWT"}')


def jwt_of(payload: object, *, raw: bytes | None = None) -> str:
    """A JWT-shaped token whose payload segment encodes ``payload`` (or ``raw`` bytes)."""
    body = raw if raw is not None else json.dumps(payload).encode()
    return f"{JWT_HEADER}.{b64url(body)}.c2ln"


CLAIMS_CASES = {
    "jwt": (jwt_of({"appid": "a", "oid": "o"}), {"appid": "a", "oid": "o"}),
    "utf-8": (jwt_of({"n": "é"}), {"n": "é"}),
    "padded payload": ("h.eyJhIjogMX0=.s", {"a": 1}),
    "opaque": ("opaque-token", None),
    "two segments": ("a.b", None),
    "empty": ("", None),
    "empty segments": ("..", None),
    "jwe": ("h.p.s.k.t", None),  # encrypted: five segments
    "four segments": (jwt_of({"appid": "a"}) + ".more", None),
    "not base64url": ("h.!!!!.s", None),
    "standard alphabet": ("h.ab+c.s", None),
    "impossible length": ("h.abcde.s", None),
    "not utf-8": (jwt_of(None, raw=b"\xff\xfe{}"), None),
    "not json": (jwt_of(None, raw=b"{not json"), None),
    "array": (jwt_of([1, 2]), None),
    "string": (jwt_of("appid"), None),
    "null": (jwt_of(None), None),
    "nested arrays": (jwt_of(None, raw=b"[" * 5000 + b"]" * 5000), None),
    "oversized": (jwt_of({"pad": "x" * MAX_CLAIMS_SEGMENT}), None),  # not even decoded
}


@pytest.mark.parametrize(("token", "claims"), list(CLAIMS_CASES.values()), ids=list(CLAIMS_CASES))
def test_jwt_claims_are_read_safely(token: str, claims: object) -> None:
    assert decode_jwt_claims(token) == claims


def test_deeply_nested_claims_never_raise() -> None:
    # Within the size bound, CPython 3.13's decoder reads this depth; older ones stop with a
    # RecursionError, which the reader turns into None. Either way: no exception, no hang.
    token = jwt_of(None, raw=b'{"a":' * 2000 + b"1" + b"}" * 2000)
    claims = decode_jwt_claims(token)
    assert claims is None or set(claims) == {"a"}
    assert token_identifier(token, "client_id") is None


def test_a_payload_just_under_the_limit_is_read() -> None:
    token = jwt_of({"appid": "a", "pad": "x" * (MAX_CLAIMS_SEGMENT * 3 // 4 - 40)})
    assert len(token.split(".")[1]) <= MAX_CLAIMS_SEGMENT
    assert token_identifier(token, "client_id") == "a"


@pytest.mark.parametrize(
    ("claims", "kind", "identifier"),
    [
        ({"appid": "a", "azp": "z"}, "client_id", "a"),
        ({"azp": "z"}, "client_id", "z"),
        ({"appid": "", "azp": "z"}, "client_id", "z"),
        ({"appid": 5}, "client_id", None),
        ({"oid": "o", "appid": "a"}, "object_id", "o"),
        ({"appid": "a"}, "object_id", None),
        ({"xms_mirid": "/s/r"}, "resource_id", "/s/r"),
        ({"xms_mirid": ["/s/r"]}, "resource_id", None),
        ({"appid": "a"}, "system_assigned", None),
    ],
)
def test_token_identifier(claims: dict, kind: str, identifier: str | None) -> None:
    assert token_identifier(jwt_of(claims), kind) == identifier


def token_response(token: str) -> RawResponse:
    return response(body={"access_token": token, "expires_in": 3600})


KIND_ARGS = {
    "client_id": ({"appid": "CID-1"}, "cid-1", None),
    "object_id": ({"oid": "OID-1"}, None, {"object_id": "oid-1"}),
    "resource_id": ({"xms_mirid": "/Subscriptions/S/rg/UAMI"}, None, {"resource_id": "/subscriptions/s/RG/uami"}),
}


@pytest.mark.parametrize("source", [S.IMDS, S.APP_SERVICE, S.AZURE_ML])
@pytest.mark.parametrize("kind", list(KIND_ARGS))
def test_a_token_for_the_identity_requested_is_accepted(source: S, kind: str) -> None:
    claims, client_id, config = KIND_ARGS[kind]  # the same identifiers, in another case
    token = jwt_of({**claims, "tid": "t"})
    assert parse(source, token_response(token), client_id, config).token == token


@pytest.mark.parametrize("source", [S.IMDS, S.APP_SERVICE, S.AZURE_ML])
@pytest.mark.parametrize(
    ("kind", "claims", "client_id", "config", "requested", "returned"),
    [
        ("client_id", {"appid": "SYSTEM-APP"}, "cid-1", None,
         "user-assigned identity client_id=cid-1", "client_id=SYSTEM-APP"),
        ("client_id", {"azp": "SYSTEM-APP"}, "cid-1", None,
         "user-assigned identity client_id=cid-1", "client_id=SYSTEM-APP"),
        ("object_id", {"oid": "SYSTEM-OID", "appid": "cid-1"}, None, {"object_id": "oid-1"},
         "user-assigned identity object_id=oid-1", "object_id=SYSTEM-OID"),
        ("resource_id", {"xms_mirid": "/s/vm", "oid": "oid-1"}, None, {"resource_id": "/s/uami"},
         "user-assigned identity resource_id=/s/uami", "resource_id=/s/vm"),
        # the selector comes with an identity_config entry unknown to us: still checked
        ("client_id", {"appid": "SYSTEM-APP"}, "cid-1", {"mi_res_id": "/x"},
         "user-assigned identity client_id=cid-1", "client_id=SYSTEM-APP"),
    ],
)
def test_a_token_for_another_identity_is_refused(
    source: S, kind, claims, client_id, config, requested, returned
) -> None:
    token = jwt_of({**claims, "tid": "CANARY-TENANT", "upn": "CANARY-UPN"})
    with pytest.raises(IdentityMismatchError) as caught:
        parse(source, token_response(token), client_id, config)
    error = caught.value
    assert isinstance(error, InvalidTokenResponseError)
    assert (error.requested, error.returned) == (requested, returned)
    assert (error.source, error.status_code) == (source, 200)
    message = str(error)
    assert message.startswith(f"{source.label} managed identity endpoint answered with a token "
                              f"for another identity: {requested} was requested, but the token "
                              f"is for {returned}.")
    assert "identity is assigned to this resource" in message
    assert "may not support selecting user-assigned identities" in message
    for secret in (token, token.split(".")[1], "CANARY-TENANT", "CANARY-UPN"):
        assert secret not in message and secret not in repr(error)


@pytest.mark.parametrize(
    ("token", "client_id", "config"),
    [
        ("opaque-token", "cid-1", None),  # not a JWT: nothing to compare
        (jwt_of([1]), "cid-1", None),
        (jwt_of({"oid": "other"}), "cid-1", None),  # no appid or azp
        (jwt_of({"appid": "other"}), None, {"object_id": "oid-1"}),  # no oid
        (jwt_of({"appid": "other"}), None, {"resource_id": "/s/uami"}),  # no xms_mirid
        (jwt_of({"appid": 42}), "cid-1", None),
        (jwt_of({"appid": "other", "oid": "other"}), None, None),  # system-assigned
        (jwt_of({"appid": "other", "xms_mirid": "/s/vm"}), None, {"mi_res_id": "/s/uami"}),  # unknown keys only
    ],
)
def test_tokens_that_cannot_be_compared_are_accepted(token, client_id, config) -> None:
    assert parse(S.IMDS, token_response(token), client_id, config).token == token


def test_the_returned_identifier_is_scrubbed() -> None:
    hostile = "evil\r\nFAKE LOG LINE " + "x" * 500
    with pytest.raises(IdentityMismatchError) as caught:
        parse(S.IMDS, token_response(jwt_of({"appid": hostile})), client_id="cid-1")
    returned = caught.value.returned
    assert returned.startswith("client_id=evil FAKE LOG LINE xxx") and returned.endswith("...")
    assert "\n" not in str(caught.value) and len(returned) <= len("client_id=") + 200
    nested = jwt_of({"appid": "a"})
    with pytest.raises(IdentityMismatchError) as caught:
        parse(S.IMDS, token_response(jwt_of({"appid": f"id {nested}"})), client_id="cid-1")
    assert caught.value.returned == "client_id=id ****"


def test_arc_checks_its_echo_first_then_the_token() -> None:
    token = jwt_of({"appid": "system-app"})
    echoed = {"access_token": token, "expires_in": 3600, "client_id": "cid-1"}
    with pytest.raises(IdentityMismatchError, match="client_id=system-app"):
        parse(S.AZURE_ARC, response(body=echoed), client_id="cid-1")
    not_echoed = {**echoed, "client_id": "system-app"}
    with pytest.raises(ManagedIdentityError, match="did not confirm") as caught:
        parse(S.AZURE_ARC, response(body=not_echoed), client_id="cid-1")
    assert not isinstance(caught.value, IdentityMismatchError)
    ok = jwt_of({"appid": "CID-1"})
    assert parse(S.AZURE_ARC, response(body={**echoed, "access_token": ok}), client_id="cid-1").token == ok


def test_workload_identity_checks_the_application() -> None:
    v2 = jwt_of({"azp": "APP", "oid": "sp"})
    assert parse(S.WORKLOAD_IDENTITY, token_response(v2)).token == v2  # the configured client ID
    assert parse(S.WORKLOAD_IDENTITY, token_response("opaque")).token == "opaque"
    with pytest.raises(IdentityMismatchError) as caught:
        parse(S.WORKLOAD_IDENTITY, token_response(jwt_of({"appid": "other-app"})))
    error = caught.value
    assert (error.requested, error.returned) == ("application client_id=app", "client_id=other-app")
    assert str(error).startswith("Microsoft Entra ID answered with a token for another identity")
    assert "AZURE_AUTHORITY_HOST" in str(error)
    explicit = jwt_of({"appid": "explicit"})
    assert parse(S.WORKLOAD_IDENTITY, token_response(explicit), client_id="explicit").token == explicit
