"""What this process knows of each endpoint whose source decides on first contact (IMDS):
whether it has ever answered, and a remembered "unavailable" verdict.

IMDS is the source chosen when nothing in the environment names another, so it is the one a
laptop or a CI machine ends up asking, usually inside a credential chain. Until it has answered
this process at all (any HTTP status), a failure to connect means there is no IMDS here: the
acquisition gives its verdict at once (``_retry.next_delay(first_contact=True)``), and the verdict
is remembered for a window, so the calls that follow fail at once too and a chain moves on
without waiting. The window starts at :data:`UNAVAILABLE_WINDOW` seconds and doubles with each
verdict that follows, up to :data:`UNAVAILABLE_WINDOW_MAX`; after it, one acquisition asks
again, so an endpoint that comes up later is found. Any answer forgets the verdicts for good:
from then on connection failures are transient and retried.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from urllib.parse import urlsplit

from ._errors import CredentialUnavailableError

UNAVAILABLE_WINDOW = 5.0
UNAVAILABLE_WINDOW_MAX = 60.0


class EndpointContact:
    """One endpoint, as seen by this process on one clock."""

    __slots__ = ("_error", "_lock", "_until", "_verdicts", "answered")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.answered = False
        """Whether the endpoint has ever answered (any HTTP status)."""
        self._verdicts = 0
        self._until = 0.0
        self._error: CredentialUnavailableError | None = None

    def answer(self) -> None:
        """The endpoint answered: it exists; forget any verdict."""
        if not self.answered:
            with self._lock:
                self.answered = True
                self._verdicts = 0
                self._until = 0.0

    def remembered(self, now: float) -> CredentialUnavailableError | None:
        """The remembered verdict while its window lasts, as a new error; else ``None``."""
        with self._lock:
            error, left = self._error, self._until - now
            if self.answered or error is None or left <= 0:
                return None
        return CredentialUnavailableError(
            f"{error.message} (Remembered: the endpoint is asked again in {left:.1f} s.)",
            source=error.source,
        )

    def unavailable(
        self, error: CredentialUnavailableError, now: float
    ) -> CredentialUnavailableError:
        """Remember ``error`` as the verdict; returns it, saying for how long it holds."""
        with self._lock:
            self._verdicts += 1
            window = min(UNAVAILABLE_WINDOW * 2 ** (self._verdicts - 1), UNAVAILABLE_WINDOW_MAX)
            self._until = now + window
            self._error = error
        return CredentialUnavailableError(
            f"{error.message} Calls in the next {window:.0f} s fail at once without asking "
            "again.",
            source=error.source,
            attempts=error.attempts,
            elapsed=error.elapsed,
        )


_contacts: dict[tuple[str, Callable[[], float]], EndpointContact] = {}
_contacts_lock = threading.Lock()


def contact_for(endpoint: str, clock: Callable[[], float]) -> EndpointContact:
    """What this process knows of ``endpoint``'s host and port, measured on ``clock``."""
    parts = urlsplit(endpoint)
    key = (f"{parts.scheme}://{parts.netloc}".lower(), clock)
    with _contacts_lock:
        contact = _contacts.get(key)
        if contact is None:
            contact = _contacts[key] = EndpointContact()
    return contact
