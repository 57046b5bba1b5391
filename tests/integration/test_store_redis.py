"""RedisStore against a real redis-server: shared limits, TTL on every key, crash and recovery."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from realservers import Redis

from smtpguard import metrics
from smtpguard.checks.base import CheckContext, CheckEnv
from smtpguard.checks.ratelimit import RateLimitCheck
from smtpguard.errors import StoreError
from smtpguard.facts import Session
from smtpguard.stage import Stage
from smtpguard.store.base import GreylistState
from smtpguard.store.breaker import BreakerState
from smtpguard.store.factory import create_store
from smtpguard.store.redis import RedisStore


@pytest.fixture
async def stores(redis_server: Redis) -> AsyncIterator[tuple[RedisStore, RedisStore]]:
    a = create_store(redis_server.url, timeout=0.5, prefix="t:")
    b = create_store(redis_server.url, timeout=0.5, prefix="t:")
    assert isinstance(a, RedisStore) and isinstance(b, RedisStore)
    yield a, b
    await a.close()
    await b.close()


async def wait_until(pred: Callable[[], Awaitable[bool]], timeout: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not await pred():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def all_keys(store: RedisStore) -> list[bytes]:
    return [k async for k in store.client.scan_iter(match=f"{store.prefix}*")]


async def test_two_replicas_share_one_limit_exactly(stores: tuple[RedisStore, RedisStore]) -> None:
    a, b = stores
    now = time.time()
    calls = [(a if i % 2 else b).rate_limit("shared", 0.001, 10, 1, now) for i in range(40)]
    decisions = await asyncio.gather(*calls)
    assert sum(d.allowed for d in decisions) == 10
    refused = [d for d in decisions if not d.allowed]
    assert all(d.retry_after > 0 for d in refused)


async def test_concurrency_slots_are_shared(stores: tuple[RedisStore, RedisStore]) -> None:
    a, b = stores
    now = time.time()
    assert await a.acquire("ip", "s1", 2, 60, now)
    assert await b.acquire("ip", "s2", 2, 60, now)
    assert not await a.acquire("ip", "s3", 2, 60, now)
    assert await b.acquire("ip", "s1", 2, 60, now)  # re-taking a held slot refreshes it
    await a.release("ip", "s1")
    assert await b.acquire("ip", "s3", 2, 60, now)


async def test_greylist_states_shared(stores: tuple[RedisStore, RedisStore]) -> None:
    a, b = stores
    t0 = time.time()
    assert (await a.greylist("trip", "cl", 300, 3600, 86400, t0)).state is GreylistState.NEW
    too_soon = await b.greylist("trip", "cl", 300, 3600, 86400, t0 + 10)
    assert too_soon.state is GreylistState.TOO_SOON and too_soon.retry_in == pytest.approx(290)
    assert (await b.greylist("trip", "cl", 300, 3600, 86400, t0 + 301)).state is GreylistState.PASSED
    assert (await a.greylist("trip", "cl", 300, 3600, 86400, t0 + 302)).state is GreylistState.PASSED
    for _ in range(2):
        await a.greylist_success("cl", 86400, t0)
    d = await b.greylist("other", "cl", 300, 3600, 86400, t0 + 5, auto_allow_after=2)
    assert d.state is GreylistState.ALLOWLISTED


async def test_every_key_has_a_ttl_and_expires(stores: tuple[RedisStore, RedisStore]) -> None:
    a, _ = stores
    now = time.time()
    await a.rate_limit("fast", 100.0, 5, 1, now)  # refills in < 1 s -> TTL 1-2 s
    await a.rate_limit("slow", 1 / 3600, 100, 3, now)
    await a.acquire("conc", "slot", 5, 1.0, now)
    await a.greylist("trip", "client", 300, 1.0, 86400, now)
    await a.greylist_success("client", 1.0, now)
    keys = await all_keys(a)
    assert len(keys) == 5
    for key in keys:
        ttl = await a.client.pttl(key)
        assert ttl > 0, key  # -1 would be a key without expiry, -2 a vanished one
    await wait_until(lambda: _gone(a, ["fast", "conc", "trip", "client"]), what="short-lived keys to expire")
    assert [k for k in await all_keys(a) if b"slow" in k]


async def _gone(store: RedisStore, names: list[str]) -> bool:
    keys = await all_keys(store)
    return not any(name.encode() in k for k in keys for name in names)


def _ctx(env: CheckEnv, ip: str) -> CheckContext:
    session = Session(id="s1", listener="mx", client_ip=ipaddress.ip_address(ip), client_port=2525)
    return CheckContext(stage=Stage.CONNECT, session=session, transaction=None, env=env)


async def test_redis_killed_mid_traffic_fail_open_closed_breaker_recovery(
        redis_server: Redis, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="smtpguard.store")
    store = create_store(redis_server.url, timeout=0.3, failures_to_open=3, cooldown=0.5)
    assert isinstance(store, RedisStore)
    env = CheckEnv(hostname="mx.test", store=store)
    limits = {"per_ip": {"count": "connections", "key": ["client_ip"], "rate": "100/s", "burst": 100}}
    open_check = RateLimitCheck(RateLimitCheck.Options.model_validate(
        {"limits": limits, "on_store_error": "fail_open"}), env)
    closed_check = RateLimitCheck(RateLimitCheck.Options.model_validate(
        {"limits": limits, "on_store_error": "fail_closed"}), env)
    try:
        assert (await open_check.run(_ctx(env, "192.0.2.1"))).outcomes == {"ratelimit.per_ip.ok"}
        redis_server.kill()
        started = time.monotonic()
        r_open = await open_check.run(_ctx(env, "192.0.2.1"))
        r_closed = await closed_check.run(_ctx(env, "192.0.2.1"))
        assert time.monotonic() - started < 5.0  # generous: each op is bounded by its 0.3 s timeout
        assert r_open.outcomes == {"ratelimit.error"}
        assert r_closed.outcomes == {"ratelimit.error", "ratelimit.per_ip.exceeded"}
        for _ in range(3):
            await open_check.run(_ctx(env, "192.0.2.1"))
        assert store.breaker.state is BreakerState.OPEN
        assert metrics.STORE_CIRCUIT_OPEN.labels("redis")._value.get() == 1
        with pytest.raises(StoreError):  # open: fails without touching the network
            await store.rate_limit("x", 1, 1, 1, time.time())
        redis_server.start_again()

        async def recovered() -> bool:
            return (await open_check.run(_ctx(env, "192.0.2.1"))).outcomes == {"ratelimit.per_ip.ok"}

        await wait_until(recovered, what="traffic to recover after redis restart")
        assert store.breaker.state is BreakerState.CLOSED
        assert metrics.STORE_CIRCUIT_OPEN.labels("redis")._value.get() == 0
        changes = [r.getMessage() for r in caplog.records if "store circuit" in r.getMessage()]
        assert changes[0].startswith("store circuit open")
        assert changes[-1].startswith("store circuit closed")
        assert len(changes) <= 2 + 2 * len([c for c in changes if "half_open" in c])  # one line per change
        assert all(redis_server.url not in r.getMessage() for r in caplog.records)
    finally:
        await store.close()


async def test_same_semantics_as_memory_store(stores: tuple[RedisStore, RedisStore]) -> None:
    """The scenarios of tests/unit/test_store_memory.py that depend on the caller's clock."""
    a, _ = stores
    t0 = 1_000_000.0  # the caller's clock, not Redis's
    decisions = [await a.rate_limit("k", 1.0, 3, 1, t0) for _ in range(4)]
    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert decisions[-1].retry_after == pytest.approx(1.0)
    assert (await a.rate_limit("k", 1.0, 3, 1, t0 + 1.0)).allowed
    big = await a.rate_limit("bytes", 100.0, 1000, 5000, t0)
    assert not big.allowed and big.retry_after == float("inf")
    await a.rate_limit("peek", 1.0, 2, 2, t0)
    peek = await a.rate_limit("peek", 1.0, 2, 0, t0)
    assert peek.allowed and peek.tokens_left == 0
    assert await a.acquire("ip", "x", 1, 10, t0)
    assert not await a.acquire("ip", "y", 1, 10, t0 + 5)
    assert await a.acquire("ip", "y", 1, 10, t0 + 10.5)  # x expired by the caller's clock
    await a.greylist("t", "c", 300, 3600, 86400, t0)
    assert (await a.greylist("t", "c", 300, 3600, 86400, t0 + 3601)).state is GreylistState.NEW
    assert (await a.greylist("t", "c", 300, 3600, 86400, t0 + 3700)).state is GreylistState.TOO_SOON


async def test_a_server_that_never_answers_cannot_hang_an_operation() -> None:
    """A TCP peer that accepts (kernel backlog) but never replies: the op still ends in StoreError."""
    import socket

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)  # never accept(), never read
        port = silent.getsockname()[1]
        store = create_store(f"redis://:hunter2@127.0.0.1:{port}/0", timeout=0.2)
        try:
            started = time.monotonic()
            with pytest.raises(StoreError) as exc:
                await store.rate_limit("k", 1, 1, 1, time.time())
            assert time.monotonic() - started < 5.0  # bounded by the 0.2 s op timeout, generously
            assert "hunter2" not in str(exc.value) and str(port) not in str(exc.value)
        finally:
            await store.close()
