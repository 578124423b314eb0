"""A client built the way generated (autorest) Azure SDK clients build theirs: a Configuration
that takes ``credential``/``credential_scopes`` or an ``authentication_policy=`` keyword, and an
``AsyncPipelineClient`` over it. Used to swap the authentication policy under test."""

from __future__ import annotations

from typing import Any

from azure.core import AsyncPipelineClient
from azure.core.configuration import Configuration
from azure.core.pipeline import policies
from azure.core.rest import AsyncHttpResponse, HttpRequest


class GeneratedStyleConfiguration(Configuration[Any, Any]):
    """What ``_configuration.py`` of a generated async SDK client does."""

    def __init__(
        self, credential: Any = None, credential_scopes: tuple[str, ...] = (), **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.credential = credential
        self.credential_scopes = credential_scopes
        self.user_agent_policy = kwargs.get("user_agent_policy") or policies.UserAgentPolicy(
            **kwargs
        )
        self.headers_policy = kwargs.get("headers_policy") or policies.HeadersPolicy(**kwargs)
        self.proxy_policy = kwargs.get("proxy_policy") or policies.ProxyPolicy(**kwargs)
        self.logging_policy = kwargs.get("logging_policy") or policies.NetworkTraceLoggingPolicy(
            **kwargs
        )
        self.http_logging_policy = kwargs.get("http_logging_policy") or policies.HttpLoggingPolicy(
            **kwargs
        )
        self.custom_hook_policy = kwargs.get("custom_hook_policy") or policies.CustomHookPolicy(
            **kwargs
        )
        self.redirect_policy = kwargs.get("redirect_policy") or policies.AsyncRedirectPolicy(
            **kwargs
        )
        self.retry_policy = kwargs.get("retry_policy") or policies.AsyncRetryPolicy(**kwargs)
        self.authentication_policy = kwargs.get("authentication_policy")
        if self.credential and not self.authentication_policy:
            self.authentication_policy = policies.AsyncBearerTokenCredentialPolicy(
                self.credential, *self.credential_scopes, **kwargs
            )


class GeneratedStyleClient:
    """An async SDK client for one service URL: ``credential=`` or ``authentication_policy=``."""

    def __init__(
        self,
        endpoint: str,
        credential: Any = None,
        *,
        credential_scopes: tuple[str, ...] = (),
        **kwargs: Any,
    ) -> None:
        self.endpoint = endpoint.rstrip("/")
        self._config = GeneratedStyleConfiguration(credential, credential_scopes, **kwargs)
        self._client: AsyncPipelineClient[Any, Any] = AsyncPipelineClient(
            self.endpoint, config=self._config, **kwargs
        )

    async def send(
        self,
        method: str,
        path: str = "",
        *,
        stream: bool = False,
        options: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> AsyncHttpResponse:
        """Send a request; with ``stream=True`` (downloads) the body is read here, undecoded.
        ``options`` are per-request pipeline options (``enforce_https=False``...)."""
        url = f"{self.endpoint}/{path}" if path else self.endpoint
        response: AsyncHttpResponse = await self._client.send_request(
            HttpRequest(method, url, **kwargs), stream=stream, **(options or {})
        )
        if stream:
            await response.read()
        return response

    async def close(self) -> None:
        await self._client.close()

    async def __aenter__(self) -> GeneratedStyleClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
