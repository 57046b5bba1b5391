"""Token bucket properties, on the pure function and through MemoryStore with an injected clock."""

from __future__ import annotations

import asyncio

from hypothesis import given, settings
from hypothesis import strategies as st

from smtpguard.store.bucket import Bucket, charge_bucket, idle_ttl
from smtpguard.store.memory import MemoryStore

events = st.lists(st.tuples(st.floats(0, 50, allow_nan=False), st.integers(0, 5)), min_size=1, max_size=80)
rates = st.floats(0.01, 20, allow_nan=False)
bursts = st.integers(1, 30)


@given(rate=rates, burst=bursts, steps=events)
def test_never_allows_more_than_burst_plus_rate_times_elapsed(rate: float, burst: int,
                                                              steps: list[tuple[float, int]]) -> None:
    bucket: Bucket | None = None
    now = 0.0
    spent = 0.0
    for dt, cost in steps:
        now += dt
        bucket, decision = charge_bucket(bucket, rate, burst, cost, now)
        if decision.allowed:
            spent += cost
        assert 0 <= bucket.tokens <= burst + 1e-9
        assert spent <= burst + rate * now + 1e-6


@given(rate=rates, burst=bursts, steps=events)
def test_refused_charges_take_nothing(rate: float, burst: int, steps: list[tuple[float, int]]) -> None:
    bucket: Bucket | None = None
    now = 0.0
    for dt, cost in steps:
        now += dt
        before, _ = charge_bucket(bucket, rate, burst, 0, now)  # refilled content, nothing taken
        bucket, decision = charge_bucket(bucket, rate, burst, cost, now)
        if not decision.allowed:
            assert bucket.tokens == before.tokens
            assert decision.retry_after > 0


@given(rate=rates, burst=bursts, steps=events)
@settings(max_examples=50)
def test_memory_store_matches_the_bound_with_injected_clock(rate: float, burst: int,
                                                            steps: list[tuple[float, int]]) -> None:
    async def go() -> None:
        store = MemoryStore()
        now = 1_000.0
        spent = 0.0
        for dt, cost in steps:
            now += dt
            d = await store.rate_limit("k", rate, burst, cost, now)
            spent += cost if d.allowed else 0
            assert spent <= burst + rate * (now - 1_000.0) + 1e-6

    asyncio.run(go())


def test_deterministic_sequence() -> None:
    bucket, d = charge_bucket(None, 2.0, 4, 4, 10.0)
    assert d.allowed and bucket.tokens == 0
    bucket, d = charge_bucket(bucket, 2.0, 4, 1, 10.25)
    assert not d.allowed and d.retry_after == 0.25
    bucket, d = charge_bucket(bucket, 2.0, 4, 1, 10.5)
    assert d.allowed and bucket.tokens == 0


def test_clock_going_backwards_refills_nothing() -> None:
    bucket, _ = charge_bucket(None, 1.0, 2, 2, 100.0)
    bucket, d = charge_bucket(bucket, 1.0, 2, 1, 50.0)
    assert not d.allowed
    assert bucket.stamp == 100.0


def test_idle_ttl_is_time_to_full() -> None:
    assert idle_ttl(0, 1.0, 10) == 11
    assert idle_ttl(10, 1.0, 10) == 1
    assert idle_ttl(0, 0.0, 10) == 86400
