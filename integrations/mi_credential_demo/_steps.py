"""The demo's three steps, each a coroutine function of the :class:`~._stage.Stage`: the
credential directly, a FastAPI app calling a protected API, and an azure-core pipeline client.

A step prints what it saw and raises :class:`~._stage.DemoError` when something it checks did not
happen as it should.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from azure.core import AsyncPipelineClient
from azure.core.pipeline.policies import (
    AsyncRetryPolicy,
    HeadersPolicy,
    HttpLoggingPolicy,
    RequestIdPolicy,
    UserAgentPolicy,
)
from azure.core.pipeline.transport import AioHttpTransport
from opentelemetry.trace import SpanKind

from mi_credential import CredentialUnavailableError, ManagedIdentitySource
from mi_credential.emulator import Fault
from mi_credential_azure_core import BearerTokenPolicy

from . import _report
from ._services import ORDERS_SCOPE, build_fastapi_app, serve, traced_headers
from ._stage import DemoError, Stage, wrap

_S = ManagedIdentitySource

STORAGE_SCOPE = "https://storage.azure.com/.default"
VAULT_SCOPE = "https://vault.azure.net/.default"
MANAGEMENT_SCOPE = "https://management.azure.com/.default"
CONCURRENT_CALLERS = 50


async def the_credential_directly(stage: Stage) -> None:
    """A token through each hosting source and a cache hit; fifty concurrent callers sharing one
    request; a throttled endpoint retried; the typed error for an identity not assigned."""
    emulator = stage.emulator
    stage.say(f"   {'source':<17} {'first call':>10}  {'second call':<16}  claims")
    lifetimes = []
    for source in ManagedIdentitySource:
        credential = await stage.credential(source)
        start = time.perf_counter()
        token = await credential.get_token(STORAGE_SCOPE)
        first = time.perf_counter() - start
        start = time.perf_counter()
        again = await credential.get_token(STORAGE_SCOPE)
        second = time.perf_counter() - start
        if again is not token:
            raise DemoError(f"{source.label}: the second call was not served from the cache")
        claims = emulator.verify(token.token, audience="https://storage.azure.com")
        lifetimes.append((token.expires_on - time.time()) / 3600)
        second_call = f"{_report.duration(second)} cache hit"
        stage.say(
            f"   {source.label:<17} {_report.duration(first):>10}  {second_call:<16}  "
            f"aud={claims['aud']} appid={str(claims['appid'])[:8]}…"
        )
        stage.traffic.append((credential, STORAGE_SCOPE))
    stage.say(
        "   Each first call is one request to the emulated endpoint (Azure Arc: two, with its "
        "challenge);\n   the second is served from the cache. Tokens are RS256 JWTs, checked "
        f"against the emulator's key;\n   each expires in {min(lifetimes):.1f} h."
    )

    # Single flight: concurrent callers on a cold cache share one request.
    credential = await stage.credential(_S.IMDS)
    before = len(emulator.requests_for(_S.IMDS))
    tokens = await asyncio.gather(
        *(credential.get_token(VAULT_SCOPE) for _ in range(CONCURRENT_CALLERS))
    )
    sent = len(emulator.requests_for(_S.IMDS)) - before
    shared = len({t.token for t in tokens})
    stage.say(
        f"   {CONCURRENT_CALLERS} concurrent callers, cold cache: {sent} request to IMDS, "
        f"{shared} token shared by all of them"
    )
    if sent != 1 or shared != 1:
        raise DemoError(f"expected one request and one token, got {sent} and {shared}")

    # Throttling: IMDS answers 429 once; the credential waits as asked and retries.
    emulator.add_fault(
        Fault(
            source=_S.IMDS.value,
            status=429,
            headers={"retry-after-ms": "200"},
            body={"error": "throttled", "error_description": "Too many requests (emulated)"},
        )
    )
    credential = await stage.credential(_S.IMDS)
    before = len(emulator.requests_for(_S.IMDS))
    start = time.perf_counter()
    await credential.get_token(MANAGEMENT_SCOPE)
    elapsed = time.perf_counter() - start
    statuses = [r.status for r in emulator.requests_for(_S.IMDS)[before:]]
    stage.say(
        f"   IMDS throttled (429, retry-after-ms: 200): answers {statuses}, the token in "
        f"{_report.duration(elapsed)}"
    )
    if statuses != [429, 200]:
        raise DemoError(f"expected a 429 then a 200, the endpoint answered {statuses}")

    # A typed error that says what is wrong: a user-assigned identity not assigned here.
    credential = await stage.credential(_S.IMDS, client_id=str(uuid.uuid4()))
    try:
        await credential.get_token(MANAGEMENT_SCOPE)
    except CredentialUnavailableError as exc:
        stage.say(wrap(f"An identity not assigned to this VM: {type(exc).__name__}: {exc}"))
    else:
        raise DemoError("a token for an identity that is not assigned")


async def a_fastapi_app(stage: Stage) -> None:
    """A FastAPI app (``ManagedIdentityMiddleware``, served by uvicorn) whose handler calls the
    Orders API through a session signed by the aiohttp middleware."""
    emulator, orders = stage.emulator, stage.orders
    app = build_fastapi_app(
        orders_url=orders.url,
        credential_options=stage.credential_options(_S.APP_SERVICE),
        ca_file=emulator.ca_file,
        tracer=stage.telemetry.tracer,
    )
    before = len(emulator.requests_for(_S.APP_SERVICE))
    stage.app_url = await stage.stack.enter_async_context(serve(app))
    warmed = len(emulator.requests_for(_S.APP_SERVICE)) - before
    stage.say(
        f"   uvicorn serves the app at {stage.app_url}; at startup ManagedIdentityMiddleware "
        f"warmed\n   a token for {ORDERS_SCOPE} (App Service: {warmed} request)"
    )

    with stage.telemetry.tracer.start_as_current_span(
        "GET /orders to the Orders API, without a token", kind=SpanKind.CLIENT
    ) as span:
        async with stage.client.get(orders.url, headers=traced_headers()) as response:
            span.set_attribute("http.response.status_code", response.status)
            challenge = response.headers.get("WWW-Authenticate", "")
    stage.say(f"   Orders API called without a token: {response.status} ({challenge})")
    if response.status != 401:
        raise DemoError(f"the Orders API answered {response.status} without a token")

    accepted = len(orders.accepted)
    for _ in range(2):
        body = await stage.call_app("/orders")
        caller = body["caller"]
        stage.say(
            f"   GET /orders -> 200, {body['orders']} orders: the app's handler called the "
            f"Orders API, which\n      verified its token (aud={caller['aud']}, "
            f"appid={str(caller['appid'])[:8]}...)"
        )
    if len(orders.accepted) - accepted != 2:
        raise DemoError("the Orders API did not accept both of the app's calls")
    more = len(emulator.requests_for(_S.APP_SERVICE)) - before - warmed
    stage.say(f"   token requests made by the two calls: {more} (the warmed token was cached)")
    readiness = await stage.call_app("/health/identity")
    scopes = "".join(
        f"\n      {s['scope']} expires in {s['expires_in'] / 3600:.1f} h"
        for s in readiness["scopes"]
    )
    stage.say(
        f"   GET /health/identity -> ready={readiness['ready']}, "
        f"source={readiness['source']}:{scopes}"
    )


async def an_azure_core_client(stage: Stage) -> None:
    """An azure-core pipeline client, built as Azure SDK clients are, with
    ``BearerTokenPolicy``, calling the Orders API."""
    emulator = stage.emulator
    credential = await stage.credential(_S.WORKLOAD_IDENTITY)
    # The policies generated Azure SDK clients put in their pipelines, with
    # BearerTokenPolicy where they put azure-core's AsyncBearerTokenCredentialPolicy.
    policies: list[Any] = [
        RequestIdPolicy(),
        HeadersPolicy(),
        UserAgentPolicy(sdk_moniker="mi-credential-demo"),
        AsyncRetryPolicy(retry_total=2),
        BearerTokenPolicy(credential, ORDERS_SCOPE),
        HttpLoggingPolicy(),
    ]
    transport = AioHttpTransport(connection_verify=emulator.ca_file, use_env_settings=False)
    pipeline: AsyncPipelineClient[Any, Any] = AsyncPipelineClient(
        stage.orders.url, policies=policies, transport=transport
    )
    stage.pipeline = await stage.stack.enter_async_context(pipeline)
    before = len(emulator.requests_for(_S.WORKLOAD_IDENTITY))
    for _ in range(2):
        body = await stage.call_pipeline()
        caller = body["caller"]
        stage.say(
            f"   GET /orders -> 200, {len(body['orders'])} orders; the Orders API verified "
            f"the token\n      (workload identity: aud={caller['aud']}, "
            f"appid={str(caller['appid'])[:8]}...)"
        )
    sent = len(emulator.requests_for(_S.WORKLOAD_IDENTITY)) - before
    stage.say(
        f"   token requests to Microsoft Entra ID: {sent} (BearerTokenPolicy keeps no copy "
        "of its own;\n      the credential's cache served the second call)"
    )
    if sent != 1:
        raise DemoError(f"expected one token request, saw {sent}")


#: The steps in order, with the titles the report and the span tree show.
STEPS: list[tuple[str, Callable[[Stage], Awaitable[None]]]] = [
    ("1. The credential, directly", the_credential_directly),
    ("2. FastAPI app -> Orders API", a_fastapi_app),
    ("3. azure-core pipeline client -> Orders API", an_azure_core_client),
]
