"""Circuit breaker for the shared store: stop waiting on a dead Redis, probe it, recover.

States: CLOSED (calls go through) -> OPEN after `failures_to_open` consecutive failures (calls
fail at once with `StoreError`, no network) -> HALF_OPEN once `cooldown` seconds passed (exactly
one probe call goes through; the others still fail fast) -> CLOSED on its success, OPEN again
(new cool-down) on its failure. Invariants: the gauge STORE_CIRCUIT_OPEN{backend} is 1 exactly
while not CLOSED; one log line per state change, never per call; the clock is injectable.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable

from smtpguard import metrics
from smtpguard.errors import StoreError

log = logging.getLogger("smtpguard.store")


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitOpenError(StoreError):
    """The store is considered down; the call was not attempted."""


class CircuitBreaker:
    def __init__(self, backend: str, *, failures_to_open: int = 3, cooldown: float = 2.0,
                 monotonic: Callable[[], float]) -> None:
        self.backend = backend
        self.failures_to_open = max(1, failures_to_open)
        self.cooldown = cooldown
        self._monotonic = monotonic
        self.state = BreakerState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._probe_in_flight = False
        metrics.STORE_CIRCUIT_OPEN.labels(backend).set(0)

    def before_call(self) -> None:
        """Raise `CircuitOpenError` unless this call may go to the backend."""
        if self.state is BreakerState.CLOSED:
            return
        if self.state is BreakerState.OPEN:
            if self._monotonic() - self._opened_at < self.cooldown:
                raise CircuitOpenError("state store unavailable (circuit open)")
            self._set(BreakerState.HALF_OPEN, "probing")
        if self._probe_in_flight:
            raise CircuitOpenError("state store unavailable (circuit half-open, probe in flight)")
        self._probe_in_flight = True

    def record_success(self) -> None:
        self._failures = 0
        self._probe_in_flight = False
        if self.state is not BreakerState.CLOSED:
            self._set(BreakerState.CLOSED, "store answered again")

    def record_failure(self, reason: str) -> None:
        self._failures += 1
        was_probe = self._probe_in_flight
        self._probe_in_flight = False
        if self.state is BreakerState.HALF_OPEN and was_probe:
            self._open(f"probe failed: {reason}")
        elif self.state is BreakerState.CLOSED and self._failures >= self.failures_to_open:
            self._open(f"{self._failures} consecutive failures, last: {reason}")

    def _open(self, why: str) -> None:
        self._opened_at = self._monotonic()
        self._set(BreakerState.OPEN, why)

    def _set(self, state: BreakerState, why: str) -> None:
        if state is self.state:
            return
        self.state = state
        metrics.STORE_CIRCUIT_OPEN.labels(self.backend).set(0 if state is BreakerState.CLOSED else 1)
        level = logging.INFO if state is BreakerState.CLOSED else logging.WARNING
        log.log(level, "store circuit %s backend=%s (%s)", state.value, self.backend, why)
