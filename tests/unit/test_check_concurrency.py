"""concurrency: slots per key, release on close, expiry, store failures."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
from policy_fakes import FakeClock

from smtpguard.checks.base import CheckContext, CheckEnv
from smtpguard.checks.concurrency import ConcurrencyCheck
from smtpguard.errors import StoreError
from smtpguard.facts import Session
from smtpguard.stage import Stage
from smtpguard.store.memory import MemoryStore


class BrokenStore(MemoryStore):
    async def acquire(self, key: str, slot: str, limit: int, ttl: float, now: float) -> bool:
        raise StoreError("redis acquire failed: TimeoutError")

    async def release(self, key: str, slot: str) -> None:
        raise StoreError("redis release failed: TimeoutError")


def make(options: dict[str, Any], store: Any = None, clock: FakeClock | None = None) -> ConcurrencyCheck:
    env = CheckEnv(hostname="mx.test", store=store if store is not None else MemoryStore(), clock=clock or FakeClock())
    return ConcurrencyCheck(ConcurrencyCheck.Options.model_validate(options), env)


def ctx(check: ConcurrencyCheck, session_id: str, ip: str = "192.0.2.1") -> CheckContext:
    session = Session(id=session_id, listener="mx", client_ip=ipaddress.ip_address(ip), client_port=25)
    return CheckContext(stage=Stage.CONNECT, session=session, transaction=None, env=check.env)


async def test_limit_and_release_on_connection_closed() -> None:
    check = make({"limits": {"per_ip": {"limit": 2}}})
    assert (await check.run(ctx(check, "a"))).outcomes == {"concurrency.per_ip.ok"}
    assert (await check.run(ctx(check, "b"))).outcomes == {"concurrency.per_ip.ok"}
    assert (await check.run(ctx(check, "c"))).outcomes == {"concurrency.per_ip.exceeded"}
    assert (await check.run(ctx(check, "d", "192.0.2.2"))).outcomes == {"concurrency.per_ip.ok"}
    await check.observe("connection_closed", ctx(check, "c"))  # refused: holds nothing
    assert (await check.run(ctx(check, "e"))).outcomes == {"concurrency.per_ip.exceeded"}
    await check.observe("connection_closed", ctx(check, "a"))
    assert (await check.run(ctx(check, "f"))).outcomes == {"concurrency.per_ip.ok"}
    assert check.declared_outcomes() == {"concurrency.error", "concurrency.per_ip.ok", "concurrency.per_ip.exceeded"}


async def test_network_key() -> None:
    check = make({"limits": {"per_net": {"key": ["client_net"], "limit": 1, "ipv6_prefix": 48}}})
    assert (await check.run(ctx(check, "a", "2001:db8:1:2::1"))).outcomes == {"concurrency.per_net.ok"}
    assert (await check.run(ctx(check, "b", "2001:db8:1:3::1"))).outcomes == {"concurrency.per_net.exceeded"}


async def test_slots_of_a_crashed_replica_expire() -> None:
    clock = FakeClock()
    store = MemoryStore()
    crashed = make({"limits": {"per_ip": {"limit": 1, "slot_ttl": 600}}}, store, clock)
    assert (await crashed.run(ctx(crashed, "a"))).outcomes == {"concurrency.per_ip.ok"}
    survivor = make({"limits": {"per_ip": {"limit": 1, "slot_ttl": 600}}}, store, clock)
    assert (await survivor.run(ctx(survivor, "b"))).outcomes == {"concurrency.per_ip.exceeded"}
    clock.now += 601
    assert (await survivor.run(ctx(survivor, "b"))).outcomes == {"concurrency.per_ip.ok"}


async def test_two_replicas_with_the_same_session_id_do_not_share_a_slot() -> None:
    store = MemoryStore()
    a = make({"limits": {"per_ip": {"limit": 1}}}, store)
    b = make({"limits": {"per_ip": {"limit": 1}}}, store)
    assert (await a.run(ctx(a, "same"))).outcomes == {"concurrency.per_ip.ok"}
    assert (await b.run(ctx(b, "same"))).outcomes == {"concurrency.per_ip.exceeded"}


@pytest.mark.parametrize(("mode", "expected"), [
    ("fail_open", {"concurrency.error"}),
    ("fail_closed", {"concurrency.error", "concurrency.per_ip.exceeded"}),
])
async def test_store_errors(mode: str, expected: set[str]) -> None:
    check = make({"limits": {"per_ip": {"limit": 1}}, "on_store_error": mode}, store=BrokenStore())
    assert (await check.run(ctx(check, "a"))).outcomes == expected
    await check.observe("connection_closed", ctx(check, "a"))
    assert check.held_sessions() == 0


async def test_release_failure_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    store = BrokenStore()
    check = make({"limits": {"per_ip": {"limit": 1}}}, store)
    check._held["a"] = ["concurrency:per_ip:192.0.2.1"]
    await check.observe("connection_closed", ctx(check, "a"))
    assert "slot will expire" in caplog.text
