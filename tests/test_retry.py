"""Retry decisions, offline: (policy, outcomes, time) -> waits."""

from __future__ import annotations

import pytest

from mi_credential._retry import (
    DEFAULT_RETRY_POLICY,
    IMDS_RETRY_POLICY,
    AttemptOutcome,
    RetryPolicy,
    RetryState,
    next_delay,
    parse_retry_after,
)

NO_JITTER = lambda: 0.5  # noqa: E731 - the middle of the jitter range: exact back-off


def schedule(policy: RetryPolicy, outcome: AttemptOutcome, *, remaining: float = 1e9) -> list[float]:
    """The waits before each retry while every attempt ends with ``outcome``."""
    state = RetryState()
    waits: list[float] = []
    elapsed = 0.0
    while True:
        state.attempts += 1
        delay = next_delay(policy, state, outcome, elapsed=elapsed, remaining=remaining - elapsed,
                           random=NO_JITTER)
        if delay is None:
            return waits
        waits.append(round(delay, 6))
        elapsed += delay


def test_imds_status_schedule() -> None:
    assert schedule(IMDS_RETRY_POLICY, AttemptOutcome(status=500)) == [0.8, 1.6, 3.2, 6.4, 12.8]
    assert schedule(IMDS_RETRY_POLICY, AttemptOutcome(status=404)) == [0.8, 1.6, 3.2, 6.4, 12.8]
    assert schedule(IMDS_RETRY_POLICY, AttemptOutcome(status=429)) == [0.8, 1.6, 3.2, 6.4, 12.8]


def test_imds_410_keeps_trying_for_at_least_70_seconds() -> None:
    waits = schedule(IMDS_RETRY_POLICY, AttemptOutcome(status=410))
    # 2.5 s back-off base, the last wait trimmed so the final attempt falls on the 70 s mark
    assert waits == [2.5, 5.0, 10.0, 20.0, 32.5]
    assert sum(waits) == 70


def test_imds_410_with_unlucky_jitter_still_spans_70_seconds() -> None:
    state, elapsed = RetryState(), 0.0
    waits = []
    while True:
        state.attempts += 1
        delay = next_delay(IMDS_RETRY_POLICY, state, AttemptOutcome(status=410), elapsed=elapsed,
                           remaining=1e9, random=lambda: 0.0)
        if delay is None:
            break
        waits.append(delay)
        elapsed += delay
    assert elapsed >= 70
    assert len(waits) > 5


def test_other_sources_schedule() -> None:
    assert schedule(DEFAULT_RETRY_POLICY, AttemptOutcome(status=503)) == [0.8, 1.6, 3.2]
    for status in (400, 401, 403, 404, 410, 501, 505):
        assert schedule(DEFAULT_RETRY_POLICY, AttemptOutcome(status=status)) == []


def test_connection_errors_are_retried_three_times() -> None:
    assert schedule(DEFAULT_RETRY_POLICY, AttemptOutcome(error=True)) == [0.8, 1.6, 3.2]
    assert schedule(IMDS_RETRY_POLICY, AttemptOutcome(error=True)) == [0.8, 1.6, 3.2]


def test_retry_after_makes_any_error_status_retryable_and_is_obeyed() -> None:
    assert schedule(DEFAULT_RETRY_POLICY, AttemptOutcome(status=400, retry_after=2)) == [2, 2, 2]
    assert schedule(DEFAULT_RETRY_POLICY, AttemptOutcome(status=429, retry_after=0)) == [0.8, 1.6, 3.2]


def test_every_wait_ends_before_the_deadline() -> None:
    assert schedule(DEFAULT_RETRY_POLICY, AttemptOutcome(status=429, retry_after=700), remaining=90) == []
    assert schedule(IMDS_RETRY_POLICY, AttemptOutcome(status=500), remaining=5) == [0.8, 1.6]


def test_jitter_spreads_waits() -> None:
    low = next_delay(DEFAULT_RETRY_POLICY, RetryState(attempts=1), AttemptOutcome(status=500),
                     elapsed=0, remaining=100, random=lambda: 0.0)
    high = next_delay(DEFAULT_RETRY_POLICY, RetryState(attempts=1), AttemptOutcome(status=500),
                      elapsed=0, remaining=100, random=lambda: 0.999999)
    assert low == pytest.approx(0.64)
    assert high == pytest.approx(0.96, rel=1e-5)


NOW = 1_800_000_000.0


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, None),
        ({"retry-after": "5"}, 5.0),
        ({"retry-after": " 2.5 "}, 2.5),
        ({"retry-after": "-3"}, 0.0),
        ({"retry-after": "garbage"}, None),
        ({"retry-after-ms": "1500"}, 1.5),
        ({"x-ms-retry-after-ms": "250", "retry-after": "9"}, 0.25),
    ],
)
def test_parse_retry_after(headers, expected) -> None:
    assert parse_retry_after(headers, NOW) == expected


def test_parse_retry_after_http_date() -> None:
    from email.utils import formatdate

    assert parse_retry_after({"retry-after": formatdate(NOW + 30, usegmt=True)}, NOW) == 30.0
    assert parse_retry_after({"retry-after": formatdate(NOW - 30, usegmt=True)}, NOW) == 0.0
