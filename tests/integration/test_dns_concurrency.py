"""Slow DNS never holds up fast DNS, and the event loop never blocks while SPF runs in threads.

Assertions are about ordering and conditions (what had finished when), never wall-clock limits.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest
from auth_fakes import make_ctx
from realservers import NSD, SilentUDP

from smtpguard.checks.base import CheckEnv
from smtpguard.checks.spf import CHECK as SPF
from smtpguard.checks.spf import Options
from smtpguard.dns.resolver import DNSResolver
from smtpguard.errors import DNSError

ZONE = (Path(__file__).parents[1] / "zones" / "auth" / "auth.test.zone").read_text()
ZONE = ZONE.replace("@@DKIM_RSA@@", '"x"').replace("@@DKIM_ED@@", '"x"').replace("@@ARC_KEY@@", '"x"')


@pytest.fixture
def nsd(nsd_factory: Callable[[Mapping[str, str]], NSD]) -> NSD:
    return nsd_factory({"auth.test": ZONE})


@pytest.fixture
def fast(nsd: NSD) -> Iterator[DNSResolver]:
    r = DNSResolver([f"127.0.0.1:{nsd.port}"], timeout=5.0)
    yield r
    r.close()


@pytest.fixture
def slow(silent_nameserver: SilentUDP) -> Iterator[DNSResolver]:
    r = DNSResolver([f"127.0.0.1:{silent_nameserver.port}"], timeout=1.5)
    yield r
    r.close()


async def test_answered_lookups_do_not_wait_for_silent_ones(fast: DNSResolver, slow: DNSResolver) -> None:
    finished: list[tuple[str, str]] = []

    async def lookup(kind: str, resolver: DNSResolver, i: int) -> None:
        try:
            await resolver.lookup_txt(f"n{i}.pass.auth.test" if kind == "slow" else "pass.auth.test")
            how = "answered"
        except DNSError:
            how = "timeout"
        finished.append((kind, how))

    tasks = [lookup("slow" if i % 2 else "fast", slow if i % 2 else fast, i) for i in range(100)]
    await asyncio.gather(*tasks)
    # every one of the 50 answered lookups finished before the first silent one gave up
    assert finished[:50] == [("fast", "answered")] * 50
    assert finished[50:] == [("slow", "timeout")] * 50


async def test_event_loop_keeps_ticking_while_spf_threads_wait_on_dns(fast: DNSResolver,
                                                                     slow: DNSResolver) -> None:
    checks_running = asyncio.Event()
    done = asyncio.Event()
    ticks_while_running = 0

    async def heartbeat() -> None:
        nonlocal ticks_while_running
        while not done.is_set():
            await asyncio.sleep(0.005)
            if checks_running.is_set():
                ticks_while_running += 1

    async def spf(resolver: DNSResolver, sender: str) -> str:
        check = SPF(Options(), CheckEnv(hostname="mx.guard.test", dns=resolver))
        result = await check.run(make_ctx(resolver, sender=sender, ip="192.0.2.1"))
        return result.details["result"]

    beat = asyncio.create_task(heartbeat())
    checks_running.set()
    slow_results = asyncio.gather(*(spf(slow, f"a@s{i}.auth.test") for i in range(10)))
    fast_results = await asyncio.gather(*(spf(fast, "a@pass.auth.test") for _ in range(20)))
    fast_done_ticks = ticks_while_running
    assert not slow_results.done()  # the blocked SPF threads are still waiting on the silent server
    results = await slow_results
    checks_running.clear()
    done.set()
    await beat
    assert fast_results == ["pass"] * 20
    assert results == ["temperror"] * 10
    # the loop kept running its other tasks while SPF threads sat in blocking DNS calls
    assert ticks_while_running > fast_done_ticks
