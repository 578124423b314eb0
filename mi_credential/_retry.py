"""When to retry a token request, and how long to wait first. Pure: no clock, no sleep, no I/O.

The schedule follows the IMDS guidance
(https://learn.microsoft.com/entra/identity/managed-identities-azure-resources/how-to-use-vm-token#retry-guidance):
retry throttling (429), server errors (5xx), and, on IMDS, 404 (the identity is still being
assigned) and 410 (IMDS is being upgraded: keep trying for at least 70 seconds), plus connection
errors; exponential back-off with jitter; ``Retry-After`` honoured. Every wait is bounded by the
overall deadline of the acquisition: a retry that cannot start before the deadline is not made.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import NamedTuple

#: Statuses never worth retrying on a non-IMDS endpoint even with 5xx semantics: not implemented,
#: HTTP version not supported.
_NOT_RETRIED_5XX = frozenset({501, 505})


def _server_errors() -> frozenset[int]:
    return frozenset(s for s in range(500, 600) if s not in _NOT_RETRIED_5XX)


class RetryPolicy(NamedTuple):
    """A source's retry rules.

    Attributes:
        retry_statuses: Statuses retried without a ``Retry-After`` header.
        max_status_attempts: Attempts in all while the endpoint answers with retryable statuses.
        max_error_attempts: Attempts in all while connections fail or time out.
        backoff_factor: Base of the exponential back-off, in seconds: retry ``k`` (from 1) waits
            about ``factor * 2 ** (k - 1)``.
        backoff_max: Upper bound of one back-off wait, in seconds.
        gone_backoff_factor: Back-off base after a 410, if 410 is special (IMDS).
        gone_min_duration: After a first 410, keep retrying at least this long (IMDS: 70 s).
        jitter: Each wait is multiplied by a random factor in ``[1 - jitter, 1 + jitter]``.
        first_contact: Until the endpoint has answered this process at all, a failure to
            connect is a verdict, not a transient error: one quick retry of a refused
            connection, none of a connect timeout (IMDS: the source chosen when nothing names
            another, so the one a laptop or CI machine asks).
    """

    retry_statuses: frozenset[int]
    max_status_attempts: int
    max_error_attempts: int = 4
    backoff_factor: float = 0.8
    backoff_max: float = 60.0
    gone_backoff_factor: float | None = None
    gone_min_duration: float = 0.0
    jitter: float = 0.2
    first_contact: bool = False


IMDS_RETRY_POLICY = RetryPolicy(
    retry_statuses=frozenset({404, 408, 410, 429}) | _server_errors() | {501, 505},
    max_status_attempts=6,
    backoff_max=60.0,
    gone_backoff_factor=2.5,
    gone_min_duration=70.0,
    first_contact=True,
)
"""IMDS: 404 and 410 are transient there; 410 gets a slower back-off and at least 70 s."""

DEFAULT_RETRY_POLICY = RetryPolicy(
    retry_statuses=frozenset({408, 429}) | _server_errors(),
    max_status_attempts=4,
    backoff_max=120.0,
)
"""Every other source (App Service, Arc, Service Fabric, Azure ML, Cloud Shell, Entra ID)."""


class AttemptOutcome(NamedTuple):
    """What one attempt ended with, as far as retrying is concerned.

    Exactly one of ``status`` (the endpoint answered) and ``error`` (it did not: the connection
    failed or timed out) is meaningful.
    """

    status: int | None = None
    retry_after: float | None = None
    error: bool = False
    connect: bool = False
    """The connection was never established (refused, unreachable, connect timeout)."""
    timed_out: bool = False


class RetryState:
    """Counters across the attempts of one acquisition."""

    __slots__ = ("attempts", "error_attempts", "first_gone_at", "status_attempts")

    def __init__(self, attempts: int = 0) -> None:
        self.attempts = attempts
        self.status_attempts = 0
        self.error_attempts = 0
        self.first_gone_at: float | None = None
        """Seconds since the acquisition started when the first 410 arrived."""


#: First contact: the connect timeout of each attempt (a link-local or loopback endpoint
#: connects in milliseconds), the attempts while connections are refused, and the wait between.
FIRST_CONTACT_CONNECT_TIMEOUT = 1.0
FIRST_CONTACT_ATTEMPTS = 2
FIRST_CONTACT_BACKOFF = 0.2


def next_delay(
    policy: RetryPolicy,
    state: RetryState,
    outcome: AttemptOutcome,
    *,
    elapsed: float,
    remaining: float,
    random: Callable[[], float],
    first_contact: bool = False,
) -> float | None:
    """Decide whether to retry after ``outcome``; updates ``state``.

    Args:
        policy: The source's rules.
        state: Counters, already including the attempt that produced ``outcome``.
        outcome: How the attempt ended.
        elapsed: Seconds since the acquisition started.
        remaining: Seconds left before the acquisition's deadline.
        random: A source of floats in ``[0, 1)`` for the jitter.
        first_contact: The endpoint has never answered this process (see
            :attr:`RetryPolicy.first_contact`).

    Returns:
        The seconds to wait before the next attempt, or ``None`` if no retry should be made
        (not retryable, attempts exhausted, or the wait would not end before the deadline).
    """
    if outcome.error and outcome.connect and first_contact and policy.first_contact:
        state.error_attempts += 1
        if outcome.timed_out or state.error_attempts >= FIRST_CONTACT_ATTEMPTS:
            return None
        delay = _backoff(FIRST_CONTACT_BACKOFF, 1, policy, random)
        return delay if delay < remaining else None
    if outcome.error:
        state.error_attempts += 1
        if state.error_attempts >= policy.max_error_attempts:
            return None
        delay = _backoff(policy.backoff_factor, state.error_attempts, policy, random)
        return delay if delay < remaining else None

    status = outcome.status
    assert status is not None
    has_retry_after = outcome.retry_after is not None and status >= 400
    if status not in policy.retry_statuses and not has_retry_after:
        return None
    state.status_attempts += 1

    gone = status == 410 and policy.gone_backoff_factor is not None
    if gone and state.first_gone_at is None:
        state.first_gone_at = elapsed
    keep_going_for_gone = (
        gone
        and state.first_gone_at is not None
        and elapsed - state.first_gone_at < policy.gone_min_duration
    )
    if state.status_attempts >= policy.max_status_attempts and not keep_going_for_gone:
        return None

    if outcome.retry_after is not None and outcome.retry_after > 0:
        delay = outcome.retry_after
    else:
        factor = policy.gone_backoff_factor if gone and policy.gone_backoff_factor else None
        delay = _backoff(factor or policy.backoff_factor, state.status_attempts, policy, random)
    if keep_going_for_gone and state.first_gone_at is not None:
        # Do not wait past the end of the 410 window: the last attempt falls right on it.
        delay = min(delay, state.first_gone_at + policy.gone_min_duration - elapsed)
    return delay if delay < remaining else None


def _backoff(
    factor: float, retry_number: int, policy: RetryPolicy, random: Callable[[], float]
) -> float:
    base: float = min(policy.backoff_max, factor * 2.0 ** (retry_number - 1))
    return base * (1 - policy.jitter + 2 * policy.jitter * random())


def parse_retry_after(headers: Mapping[str, str], now: float) -> float | None:
    """Seconds the endpoint asked us to wait, from ``Retry-After`` (seconds or an HTTP date) or
    the millisecond variants ``retry-after-ms`` / ``x-ms-retry-after-ms``.

    Args:
        headers: Response headers with lower-case names.
        now: Current time, epoch seconds (for HTTP dates).

    Returns:
        Seconds (never negative), or ``None`` if no usable header was sent.
    """
    for name in ("retry-after-ms", "x-ms-retry-after-ms"):
        value = headers.get(name)
        if value:
            milliseconds = _finite(value)
            if milliseconds is not None:
                return max(0.0, milliseconds / 1000)
    value = headers.get("retry-after")
    if not value:
        return None
    value = value.strip()
    seconds = _finite(value)
    if seconds is not None:
        return max(0.0, seconds)
    import email.utils  # only for the rare HTTP-date form

    try:
        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, float(when.timestamp()) - now)
    except (TypeError, ValueError, IndexError, OverflowError):  # absurd years overflow
        return None


def _finite(text: str) -> float | None:
    """A finite number of ``text``, or ``None`` (``inf``, ``nan`` and words are no delay)."""
    try:
        number = float(text)
    except ValueError:
        return None
    return number if math.isfinite(number) else None
