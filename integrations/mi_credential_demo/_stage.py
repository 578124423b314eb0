"""What the demo's steps run against: the emulator, the servers beside it, the telemetry and the
report's output; and what the steps leave behind for holding (the credentials they used, the
FastAPI app, the azure-core client).
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from azure.core import AsyncPipelineClient
from azure.core.rest import HttpRequest
from opentelemetry.trace import SpanKind

from mi_credential import ManagedIdentityCredential, ManagedIdentitySource
from mi_credential.emulator import Emulator

from ._services import CALL_TIMEOUT, OrdersApi, traced_headers
from ._telemetry import DemoTelemetry

#: No line the demo prints is wider than this.
REPORT_WIDTH = 100
_WIDTH = 96


class DemoError(Exception):
    """Something the demo checks did not happen as it should."""


def wrap(text: str, indent: str = "   ") -> str:
    """``text`` filled to the report's width, its continuation lines indented a little more."""
    return textwrap.fill(text, _WIDTH, initial_indent=indent, subsequent_indent=indent + "  ")


def fit(text: str) -> str:
    """``text`` with each line wider than :data:`REPORT_WIDTH` broken at spaces, the pieces
    after the first indented three more than the line was. A word wider than that on its own
    (a long path, say) is left whole, to be copied as it is."""
    lines = []
    for line in text.split("\n"):
        if len(line) <= REPORT_WIDTH:
            lines.append(line)
            continue
        indent = line[: len(line) - len(line.lstrip())]
        lines += textwrap.wrap(
            line.strip(),
            REPORT_WIDTH,
            initial_indent=indent,
            subsequent_indent=indent + "   ",
            break_long_words=False,
            break_on_hyphens=False,
        )
    return "\n".join(lines)


@dataclass
class Stage:
    """Everything a step needs, started before the first step and closed by ``stack``.

    Attributes:
        emulator: The in-process emulator of every hosting source.
        telemetry: The SDK providers every credential and integration records with.
        orders: The protected API the FastAPI app and the azure-core client call.
        client: The demo's own session (it trusts the emulator's CA).
        stack: Closes what the steps open, when the demo ends.
        say: Prints a line of the report.
        traffic: The ``(credential, scope)`` pairs of step 1, called again while holding.
        app_url: The FastAPI app's base URL, once step 2 serves it.
        pipeline: The azure-core client, once step 3 has built it.
    """

    emulator: Emulator
    telemetry: DemoTelemetry
    orders: OrdersApi
    client: aiohttp.ClientSession
    stack: AsyncExitStack
    say: Callable[[str], None]
    traffic: list[tuple[ManagedIdentityCredential, str]] = field(default_factory=list)
    app_url: str | None = None
    pipeline: AsyncPipelineClient[Any, Any] | None = None

    def credential_options(self, source: ManagedIdentitySource) -> dict[str, Any]:
        """The keywords of a credential that uses ``source`` at the emulator (its environment,
        its CA, its Azure Arc key directory) and records with the demo's providers."""
        return {
            **self.emulator.client_options(source),
            "timeout": CALL_TIMEOUT,
            **self.telemetry.credential_options(),
        }

    async def credential(
        self, source: ManagedIdentitySource, **kwargs: Any
    ) -> ManagedIdentityCredential:
        """A credential built with :meth:`credential_options` and ``kwargs``, closed when the
        demo ends."""
        credential = ManagedIdentityCredential(**self.credential_options(source), **kwargs)
        return await self.stack.enter_async_context(credential)

    async def call_app(self, path: str) -> dict[str, Any]:
        """``GET path`` from the FastAPI app, traced; its JSON body.

        Raises:
            DemoError: The app did not answer 200.
        """
        assert self.app_url is not None
        with self.telemetry.tracer.start_as_current_span(
            f"GET {path} to the FastAPI app", kind=SpanKind.CLIENT
        ) as span:
            async with self.client.get(self.app_url + path, headers=traced_headers()) as response:
                span.set_attribute("http.response.status_code", response.status)
                if response.status != 200:
                    text = (await response.text())[:300]
                    raise DemoError(f"GET {path} answered {response.status}: {text}")
                body: dict[str, Any] = await response.json()
                return body

    async def call_pipeline(self) -> dict[str, Any]:
        """``GET /orders`` from the Orders API through the azure-core client, traced; its JSON
        body.

        Raises:
            DemoError: The Orders API did not answer 200.
        """
        assert self.pipeline is not None
        with self.telemetry.tracer.start_as_current_span(
            "GET /orders (azure-core pipeline)", kind=SpanKind.CLIENT
        ) as span:
            request = HttpRequest("GET", self.orders.url, headers=traced_headers())
            response = await self.pipeline.send_request(request)
            span.set_attribute("http.response.status_code", response.status_code)
            if response.status_code != 200:
                text = response.text()[:300]
                raise DemoError(f"GET /orders answered {response.status_code}: {text}")
            body: dict[str, Any] = response.json()
            return body
