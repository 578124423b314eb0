"""One acquisition from the endpoint: attempts under one deadline, each driving the source's flow.

A source's flow (``TokenSource.flow``) yields the requests to send and the local files to read;
this module does that I/O, adds the headers every request carries, classifies the final
response of each attempt (token, retry, or error) and records the acquisition's telemetry. It
knows nothing of any particular source.
"""

from __future__ import annotations

import functools
import logging
import random
import sys
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from ._contact import contact_for
from ._errors import InvalidTokenResponseError, ManagedIdentityError
from ._files import read_local_file
from ._models import FileRead, ParsedToken, RawResponse, TokenRequest
from ._retry import (
    FIRST_CONTACT_CONNECT_TIMEOUT,
    AttemptOutcome,
    RetryState,
    next_delay,
    parse_retry_after,
)
from ._sources import Target, TokenSource
from ._store import TokenStore, through
from ._transport import Transport, TransportError
from ._version import __version__

if TYPE_CHECKING:
    from ._recorder import Acquisition, Recorder

_logger = logging.getLogger("mi_credential")

_BASE_USER_AGENT = (
    f"mi-credential/{__version__} Python/{'.'.join(map(str, sys.version_info[:3]))} "
    f"({sys.platform}) aiohttp"
)

Exchange = tuple[TokenRequest, "RawResponse | TransportError"]
"""An attempt's last request, and its response or why there was none."""


class Acquirer:
    """Gets tokens from a source's endpoint. Immutable: credentials created alike share one
    (:func:`shared_acquirer`); each sends with its own transport.

    Args:
        source: The hosting source.
        recorder: Records spans and metrics.
        timeout: Overall deadline of one acquisition, retries included, in seconds.
        now: Wall clock, epoch seconds (request times, ``Retry-After`` dates).
        monotonic: The clock deadlines are measured with.
        sleep: Waits between attempts.
        random: Floats in ``[0, 1)`` for the back-off's jitter.
        user_agent: Text appended to the ``User-Agent`` header.
    """

    __slots__ = (
        "_contact",
        "_monotonic",
        "_now",
        "_random",
        "_sleep",
        "_source",
        "_timeout",
        "_user_agent",
        "recorder",
    )

    def __init__(
        self,
        source: TokenSource,
        recorder: Recorder,
        *,
        timeout: float,
        now: Callable[[], float],
        monotonic: Callable[[], float],
        sleep: Callable[[float], Awaitable[Any]],
        user_agent: str | None,
        random: Callable[[], float] = random.random,
    ) -> None:
        self._source = source
        self.recorder = recorder
        self._timeout = timeout
        self._now = now
        self._monotonic = monotonic
        self._sleep = sleep
        self._random = random
        self._user_agent = f"{_BASE_USER_AGENT} {user_agent}" if user_agent else _BASE_USER_AGENT
        # A source that decides on first contact (IMDS): what the process knows of its endpoint.
        self._contact = (
            contact_for(source.config.endpoint, monotonic)
            if source.retry_policy.first_contact
            else None
        )

    async def acquire(
        self,
        transport: Transport,
        target: Target,
        claims: str | None,
        reason: str,
        cache_result: str,
        store: TokenStore | None = None,
    ) -> ParsedToken:
        """A token for ``target`` from the endpoint (or through ``store``), traced and measured.

        Args:
            transport: Sends the requests.
            target: What the token is for.
            claims: The claims to send (where the source sends any).
            reason: Why (``initial``, ``expired``, ``proactive``, ``claims``), for telemetry.
            cache_result: What the cache found (``miss``, ``stale``), for telemetry.
            store: The shared cache to go through, if any: its token while good, else the
                endpoint's, by one process at a time. Another process's refresh is waited for
                half the deadline at most; the rest is this process's own, if it must ask.

        Raises:
            ManagedIdentityError: No token within the deadline.
        """
        record = self.recorder.start_acquisition(target.label, reason, cache_result)
        deadline = self._monotonic() + self._timeout  # one deadline, however the token comes
        try:
            async with transport.lease():
                if store is None:
                    parsed = await self._attempts(transport, target, claims, record, deadline)
                else:
                    shared = await through(
                        store,
                        target,
                        functools.partial(
                            self._attempts, transport, target, claims, record, deadline
                        ),
                        now=self._now,
                        monotonic=self._monotonic,
                        sleep=self._sleep,
                        bound=self._timeout / 2,
                        stale_ok=cache_result == "miss",
                    )
                    parsed = shared.token
                    self.recorder.note_shared(record, shared.origin, shared.waited)
        except ManagedIdentityError as exc:
            self.recorder.finish_acquisition(record, exc)
            # The frames below hold the request, secret headers and all, as locals: error
            # reporters that capture locals (Sentry, by default) must not find them.
            raise exc.with_traceback(None)  # noqa: B904 - the same exception, not another
        except BaseException as exc:
            self.recorder.finish_acquisition(record, exc)
            raise
        self.recorder.finish_acquisition(record, None)
        _logger.debug(
            "ManagedIdentityCredential acquired a token for %s (expires in %.0f s, refresh in "
            "%.0f s, %d attempt(s), reason: %s)",
            target.label,
            parsed.expires_on - self._now(),
            parsed.refresh_on - self._now(),
            record.attempts,
            reason,
        )
        return parsed

    async def _attempts(
        self,
        transport: Transport,
        target: Target,
        claims: str | None,
        record: Acquisition,
        deadline: float,
    ) -> ParsedToken:
        source = self._source
        policy = source.retry_policy
        start = self._monotonic()
        contact = self._contact
        if contact is not None:  # a verdict on first contact is remembered for a while
            remembered = contact.remembered(start)
            if remembered is not None:
                raise remembered
        state = RetryState()
        # The same request id on every attempt of one acquisition.
        headers = (("User-Agent", self._user_agent), ("x-ms-client-request-id", str(uuid.uuid4())))
        while True:
            state.attempts += 1
            record.attempts = state.attempts
            request_time = self._now()
            first_contact = contact is not None and not contact.answered
            request, response = await self._exchange(
                transport,
                target,
                claims,
                deadline,
                FIRST_CONTACT_CONNECT_TIMEOUT if first_contact else None,
                state.attempts - 1,
                record,
                headers,
            )
            if isinstance(response, TransportError):
                outcome = AttemptOutcome(
                    error=True, connect=response.connect, timed_out=response.timed_out
                )
            else:
                if contact is not None:
                    contact.answer()  # any status: the endpoint exists
                if 200 <= response.status < 300:
                    try:
                        return self._parsed(response, request, request_time)
                    except ManagedIdentityError as exc:
                        exc.attempts = state.attempts
                        exc.elapsed = self._monotonic() - start
                        raise
                outcome = AttemptOutcome(
                    status=response.status,
                    retry_after=parse_retry_after(response.headers, self._now()),
                )
            elapsed = self._monotonic() - start
            delay = None
            if not isinstance(response, TransportError) or response.retryable:
                delay = next_delay(
                    policy,
                    state,
                    outcome,
                    elapsed=elapsed,
                    remaining=deadline - self._monotonic(),
                    random=self._random,
                    first_contact=first_contact,
                )
            if delay is not None:
                await self._sleep(delay)
                continue
            if not isinstance(response, TransportError):
                raise source.error_from_response(
                    response, request, attempts=state.attempts, elapsed=elapsed
                )
            error = source.unreachable_error(
                request,
                response.description,
                attempts=state.attempts,
                elapsed=elapsed,
                tls=response.tls,
            )
            if first_contact and response.connect and contact is not None:
                error = contact.unavailable(error, self._monotonic())
            raise error from response

    def _parsed(
        self, response: RawResponse, request: TokenRequest, request_time: float
    ) -> ParsedToken:
        """The token of a 2xx response, if it is still valid now that it has arrived: a token
        that expired in flight (``expires_in`` shorter than the answer took) is no token."""
        source = self._source
        parsed = source.parse_response(response, request, request_time)
        if parsed.expires_on <= self._now():
            raise InvalidTokenResponseError(
                f"{source.endpoint_name} answered HTTP {response.status} with a token that "
                f"expired before the answer arrived, {self._now() - request_time:.1f} s after "
                "the request. The endpoint is too slow for the lifetime of its tokens.",
                source=source.kind,
                status_code=response.status,
                reason=response.reason,
            )
        return parsed

    async def _exchange(
        self,
        transport: Transport,
        target: Target,
        claims: str | None,
        deadline: float,
        connect_timeout: float | None,
        resend_count: int,
        record: Acquisition,
        headers: tuple[tuple[str, str], ...],
    ) -> Exchange:
        """Run one attempt of the source's flow: send what it yields (with ``headers``), read
        the files it names, and return its final response with the request it answers."""
        flow = self._source.flow(target, claims)
        reply: object = None
        request: TokenRequest | None = None
        try:
            while True:
                step = flow.send(reply)
                if isinstance(step, FileRead):
                    reply = read_local_file(step)
                    continue
                request = step.with_headers(*headers)
                try:
                    reply = await self._send(
                        transport, request, deadline, connect_timeout, resend_count, record
                    )
                except TransportError as exc:  # its frames hold the request: not kept
                    return request, exc.with_traceback(None)
        except StopIteration as stop:
            assert request is not None, "a flow sends at least one request"
            return request, stop.value
        finally:
            flow.close()

    async def _send(
        self,
        transport: Transport,
        request: TokenRequest,
        deadline: float,
        connect_timeout: float | None,
        resend_count: int,
        record: Acquisition,
    ) -> RawResponse:
        remaining = deadline - self._monotonic()
        if remaining <= 0:
            raise TransportError("the deadline passed", retryable=True)
        recorder = self.recorder
        attempt = recorder.start_attempt(record, request.method, request.url, resend_count)
        try:
            response = await transport.send(
                request, timeout=remaining, connect_timeout=connect_timeout
            )
        except TransportError as exc:
            cause = exc.__cause__
            error_type = type(cause).__name__ if cause else "timeout"
            recorder.finish_attempt(attempt, error_type=error_type)
            raise
        except BaseException as exc:
            recorder.finish_attempt(attempt, error_type=type(exc).__name__)
            raise
        recorder.finish_attempt(attempt, status=response.status)
        return response


shared_acquirer = functools.lru_cache(maxsize=32)(Acquirer)
"""An :class:`Acquirer` for these settings, shared by the credentials created with them."""
