"""MemoryStore: the same semantics RedisStore has (tests/integration/test_store_redis.py)."""

from __future__ import annotations

import math

import pytest

from smtpguard.errors import ConfigError
from smtpguard.store.base import GreylistState, Store
from smtpguard.store.factory import create_store
from smtpguard.store.memory import MemoryStore
from smtpguard.store.redis import RedisStore

T0 = 1_000_000.0


def test_factory_picks_backend_without_touching_the_network() -> None:
    assert isinstance(create_store("memory"), MemoryStore)
    store = create_store("redis://127.0.0.1:1/0")  # nothing listens there; building must not care
    assert isinstance(store, RedisStore)
    with pytest.raises(ConfigError) as exc:
        create_store("mongodb://user:secret@db/")
    assert "secret" not in str(exc.value)


def test_memory_store_satisfies_the_protocol() -> None:
    store: Store = MemoryStore()
    assert store.backend == "memory"


async def test_new_bucket_starts_full_and_refuses_without_taking() -> None:
    store = MemoryStore()
    decisions = [await store.rate_limit("k", 1.0, 3, 1, T0) for _ in range(4)]
    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert decisions[-1].retry_after == pytest.approx(1.0)
    assert (await store.rate_limit("k", 1.0, 3, 1, T0 + 1.0)).allowed  # refilled one token


async def test_cost_above_burst_is_never_allowed() -> None:
    store = MemoryStore()
    d = await store.rate_limit("bytes", 100.0, 1000, 5000, T0)
    assert not d.allowed and math.isinf(d.retry_after)


async def test_peek_with_zero_cost_reads_only() -> None:
    store = MemoryStore()
    await store.rate_limit("k", 1.0, 2, 2, T0)
    d = await store.rate_limit("k", 1.0, 2, 0, T0)
    assert d.allowed and d.tokens_left == 0


async def test_every_record_has_an_expiry_and_goes_away() -> None:
    store = MemoryStore()
    await store.rate_limit("rl", 10.0, 5, 1, T0)
    await store.acquire("cc", "s1", 2, 30, T0)
    await store.greylist("t", "c", 300, 600, 86400, T0)
    await store.greylist_success("c", 60, T0)
    assert store.size() == 4
    for key in list(store._data):
        ttl = store.ttl_of(key, T0)
        assert ttl is not None and 0 < ttl <= 86400
    assert store.sweep(T0 + 86401) == 4
    assert store.size() == 0


async def test_bucket_record_lives_until_full_again() -> None:
    store = MemoryStore()
    await store.rate_limit("k", 1.0, 10, 4, T0)
    assert store.ttl_of("rl:k", T0) == pytest.approx(5.0)  # 4 tokens to refill + 1 s


async def test_concurrency_slots_limit_release_and_expire() -> None:
    store = MemoryStore()
    assert await store.acquire("ip", "a", 2, 10, T0)
    assert await store.acquire("ip", "b", 2, 10, T0)
    assert not await store.acquire("ip", "c", 2, 10, T0)
    assert await store.acquire("ip", "a", 2, 10, T0 + 1)  # re-taking refreshes
    await store.release("ip", "b")
    assert await store.acquire("ip", "c", 2, 10, T0 + 2)
    await store.release("ip", "never-held")
    # a crashed replica's slots expire on their own
    assert await store.acquire("ip", "d", 2, 10, T0 + 12.5)
    assert await store.acquire("ip", "e", 2, 10, T0 + 12.5)


async def test_greylist_lifecycle() -> None:
    store = MemoryStore()
    d = await store.greylist("t", "c", 300, 3600, 86400, T0)
    assert d.state is GreylistState.NEW and d.retry_in == 300
    d = await store.greylist("t", "c", 300, 3600, 86400, T0 + 100)
    assert d.state is GreylistState.TOO_SOON and d.retry_in == pytest.approx(200)
    assert (await store.greylist("t", "c", 300, 3600, 86400, T0 + 300)).state is GreylistState.PASSED
    assert (await store.greylist("t", "c", 300, 3600, 86400, T0 + 50_000)).state is GreylistState.PASSED
    # passed records expire record_ttl after their last use
    assert (await store.greylist("t", "c", 300, 3600, 86400, T0 + 50_000 + 86401)).state is GreylistState.NEW


async def test_greylist_retry_after_window_starts_over() -> None:
    store = MemoryStore()
    await store.greylist("t", "c", 300, 3600, 86400, T0)
    assert (await store.greylist("t", "c", 300, 3600, 86400, T0 + 3601)).state is GreylistState.NEW
    assert (await store.greylist("t", "c", 300, 3600, 86400, T0 + 3700)).state is GreylistState.TOO_SOON


async def test_greylist_auto_allowlisting() -> None:
    store = MemoryStore()
    for i in range(3):
        assert await store.greylist_success("c", 100, T0) == i + 1
    assert (await store.greylist("t", "c", 300, 3600, 86400, T0, auto_allow_after=4)).state is GreylistState.NEW
    await store.greylist_success("c", 100, T0)
    d = await store.greylist("t2", "c", 300, 3600, 86400, T0 + 1, auto_allow_after=4)
    assert d.state is GreylistState.ALLOWLISTED
    d = await store.greylist("t3", "c", 300, 3600, 86400, T0 + 101, auto_allow_after=4)
    assert d.state is GreylistState.NEW  # the allowlisting expired
