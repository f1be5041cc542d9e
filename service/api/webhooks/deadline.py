"""A total time limit for one delivery attempt, shared by every blocking step in it (DNS, connect, TLS, I/O).

Socket timeouts bound one operation each: a receiver that trickles a byte just inside them could hold an
attempt forever. Every step instead gets what is left of one :class:`Deadline`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class DeadlineExceeded(Exception):
    """The attempt ran out of time; the message names the deadline."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"no response within the {seconds:g} s delivery deadline")
        self.seconds = seconds


class Deadline:
    """Ends ``seconds`` after it is made, on the monotonic clock."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._end = time.monotonic() + seconds

    def remaining(self) -> float:
        """Seconds left, for a socket timeout.

        Raises:
            DeadlineExceeded: None are left.
        """
        left = self._end - time.monotonic()
        if left <= 0:
            raise DeadlineExceeded(self.seconds)
        return left

    def exceeded(self) -> DeadlineExceeded:
        """The error to raise when an operation bounded by :meth:`remaining` timed out."""
        return DeadlineExceeded(self.seconds)

    def call(self, function: Callable[[], T]) -> T:
        """``function()``, given up on (left to finish in a daemon thread) when the deadline passes first.

        For calls that take no timeout, such as ``getaddrinfo``.

        Raises:
            DeadlineExceeded: The deadline passed first.
            Exception: Whatever ``function`` raised.
        """
        outcome: list[T] = []
        failure: list[BaseException] = []

        def run() -> None:
            try:
                outcome.append(function())
            except BaseException as exc:  # handed to the caller's thread
                failure.append(exc)

        thread = threading.Thread(target=run, name="webhook-deadline-call", daemon=True)
        thread.start()
        thread.join(self.remaining())
        if thread.is_alive():
            raise self.exceeded()
        if failure:
            raise failure[0]
        return outcome[0]
