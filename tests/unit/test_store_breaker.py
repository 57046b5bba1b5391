"""CircuitBreaker state machine with an injected clock: open, half-open probe, recovery, logs."""

from __future__ import annotations

import logging

import pytest

from smtpguard import metrics
from smtpguard.store.breaker import BreakerState, CircuitBreaker, CircuitOpenError


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def gauge() -> float:
    return float(metrics.STORE_CIRCUIT_OPEN.labels("unit")._value.get())


def test_opens_after_consecutive_failures_probes_and_recovers(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="smtpguard.store")
    clock = Clock()
    b = CircuitBreaker("unit", failures_to_open=3, cooldown=2.0, monotonic=clock)
    for _ in range(2):
        b.before_call()
        b.record_failure("ConnectionError")
    b.before_call()
    b.record_success()  # a success resets the count
    for _ in range(3):
        b.before_call()
        b.record_failure("ConnectionError")
    assert b.state is BreakerState.OPEN and gauge() == 1
    with pytest.raises(CircuitOpenError):
        b.before_call()
    clock.now += 2.0
    b.before_call()  # the one probe
    assert b.state is BreakerState.HALF_OPEN and gauge() == 1
    with pytest.raises(CircuitOpenError):
        b.before_call()  # others fail fast while the probe is out
    b.record_failure("TimeoutError")
    assert b.state is BreakerState.OPEN
    with pytest.raises(CircuitOpenError):
        b.before_call()  # a new cool-down started
    clock.now += 2.0
    b.before_call()
    b.record_success()
    assert b.state is BreakerState.CLOSED and gauge() == 0
    lines = [r.getMessage() for r in caplog.records]
    assert [line.split(" (")[0] for line in lines] == [
        "store circuit open backend=unit", "store circuit half_open backend=unit",
        "store circuit open backend=unit", "store circuit half_open backend=unit",
        "store circuit closed backend=unit"]


def test_failures_while_open_do_not_extend_or_log() -> None:
    clock = Clock()
    b = CircuitBreaker("unit", failures_to_open=1, cooldown=1.0, monotonic=clock)
    b.before_call()
    b.record_failure("x")
    b.record_failure("late reply of an earlier call")
    clock.now += 1.0
    b.before_call()
    assert b.state is BreakerState.HALF_OPEN
