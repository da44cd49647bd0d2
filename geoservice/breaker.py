"""A circuit breaker in front of the store: after a run of store failures, requests fail fast
with 503 for a short while instead of each waiting for its own timeout, and one probe request
at a time tests whether the store is back."""

from __future__ import annotations

import time
from collections.abc import Callable


class CircuitBreaker:
    def __init__(
        self,
        *,
        failure_threshold: int = 5,
        open_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        enabled: bool = True,
    ) -> None:
        self.enabled = enabled
        self.failure_threshold = failure_threshold
        self.open_s = open_s
        self._clock = clock
        self._failures = 0
        self._open_until = 0.0
        self._probing = False

    @property
    def is_open(self) -> bool:
        return self.enabled and self._failures >= self.failure_threshold

    def allow(self) -> bool:
        """May this request try the store? When open, only one probe after the pause."""
        if not self.is_open:
            return True
        if self._clock() < self._open_until or self._probing:
            return False
        self._probing = True
        return True

    def retry_after_s(self) -> int:
        return max(1, round(self._open_until - self._clock()))

    def succeeded(self) -> None:
        self._failures = 0
        self._probing = False

    def failed(self) -> None:
        self._failures += 1
        self._probing = False
        if self._failures >= self.failure_threshold:
            self._open_until = self._clock() + self.open_s
