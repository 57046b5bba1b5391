"""DNSResolver against an in-process authoritative fake (tests/fakedns.py): contract, cache, metrics."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from fakedns import FakeDNS

from smtpguard.dns.resolver import DNSResolver, parse_nameserver
from smtpguard.errors import DNSError
from smtpguard.metrics import DNS_QUERIES


@pytest.fixture
def server() -> Iterator[FakeDNS]:
    s = FakeDNS()
    s.records = {
        ("a.test", "A"): (300, ["192.0.2.1", "192.0.2.2"]),
        ("a.test", "AAAA"): (300, ["2001:db8::1"]),
        ("a.test", "TXT"): (300, ['"v=spf1 " "-all"', '"other"']),
        ("a.test", "MX"): (300, ["10 mx.a.test.", "20 mx2.a.test."]),
        ("1.2.0.192.in-addr.arpa", "PTR"): (300, ["host.a.test."]),
        ("zero.test", "A"): (0, ["192.0.2.9"]),
    }
    s.servfail = {"broken.test"}
    s.drop = {"silent.test"}
    yield s
    s.close()


@pytest.fixture
def resolver(server: FakeDNS) -> Iterator[DNSResolver]:
    r = DNSResolver([f"127.0.0.1:{server.port}"], timeout=0.5)
    yield r
    r.close()


def count(rtype: str, result: str) -> float:
    return DNS_QUERIES.labels(rtype, result)._value.get()


async def test_record_types(resolver: DNSResolver) -> None:
    assert sorted(await resolver.lookup_a("a.test")) == ["192.0.2.1", "192.0.2.2"]
    assert await resolver.lookup_aaaa("A.TEST.") == ["2001:db8::1"]
    assert sorted(await resolver.lookup_txt("a.test")) == [b"other", b"v=spf1 -all"]  # strings joined
    assert sorted(await resolver.lookup_mx("a.test")) == [(10, "mx.a.test"), (20, "mx2.a.test")]
    assert await resolver.lookup_ptr("192.0.2.1") == ["host.a.test"]


@pytest.mark.parametrize("name", ["nx.test", "bad..name", "x" * 64 + ".test", "mx.a.test"])
async def test_nonexistent_or_impossible_name_gives_empty_list(resolver: DNSResolver, name: str) -> None:
    assert await resolver.lookup_txt(name) == []


async def test_nodata_gives_empty_list(resolver: DNSResolver) -> None:
    assert await resolver.lookup_ptr("192.0.2.7") == []  # NXDOMAIN for the reverse name
    assert await resolver.lookup_mx("zero.test") == []  # the name exists, no MX (NODATA)


@pytest.mark.parametrize("name", ["broken.test", "silent.test"])
async def test_temporary_failures_raise_dnserror(resolver: DNSResolver, name: str) -> None:
    with pytest.raises(DNSError):
        await resolver.lookup_a(name)


async def test_positive_and_negative_answers_are_cached(resolver: DNSResolver, server: FakeDNS) -> None:
    before = count("A", "cached")
    ok, nx = count("A", "ok"), count("A", "nxdomain")
    await resolver.lookup_a("a.test")
    await resolver.lookup_a("nx.test")
    assert (count("A", "ok"), count("A", "nxdomain")) == (ok + 1, nx + 1)
    queries = len(server.seen)
    assert await resolver.lookup_a("a.test")
    assert await resolver.lookup_a("nx.test") == []
    assert len(server.seen) == queries
    assert count("A", "cached") == before + 2


async def test_ttl_is_respected(resolver: DNSResolver, server: FakeDNS) -> None:
    await resolver.lookup_a("zero.test")
    await resolver.lookup_a("zero.test")
    assert server.seen.count(("zero.test", "A")) == 2  # TTL 0: never served from cache


async def test_servfail_is_not_cached(resolver: DNSResolver, server: FakeDNS) -> None:
    for _ in range(2):
        with pytest.raises(DNSError):
            await resolver.lookup_a("broken.test")
    assert server.seen.count(("broken.test", "A")) >= 2


async def test_sync_facade_shares_the_cache_and_runs_in_the_pool(resolver: DNSResolver,
                                                                 server: FakeDNS) -> None:
    await resolver.lookup_txt("a.test")
    seen = len(server.seen)

    def blocking() -> tuple[list[bytes], str]:
        return resolver.sync.lookup_txt("a.test"), threading.current_thread().name

    txt, thread = await resolver.run_blocking(blocking)
    assert sorted(txt) == [b"other", b"v=spf1 -all"]
    assert len(server.seen) == seen
    assert thread.startswith("smtpguard-dns")
    assert await resolver.run_blocking(resolver.sync.lookup_a, "nx.test") == []
    with pytest.raises(DNSError):
        await resolver.run_blocking(resolver.sync.lookup_a, "broken.test")


async def test_no_search_list(resolver: DNSResolver, server: FakeDNS) -> None:
    await resolver.lookup_a("single")
    assert [n for n, _ in server.seen] == ["single"]


def test_close_shuts_the_pool(server: FakeDNS) -> None:
    r = DNSResolver([f"127.0.0.1:{server.port}"])
    r.close()
    with pytest.raises(RuntimeError):
        r._pool.submit(print)


@pytest.mark.parametrize(("spec", "expected"), [
    ("127.0.0.1:5353", ("127.0.0.1", 5353)), ("10.0.0.1", ("10.0.0.1", 53)),
    ("[::1]:5300", ("::1", 5300)), ("::1", ("::1", 53)), ("[2001:db8::1]", ("2001:db8::1", 53)),
])
def test_parse_nameserver(spec: str, expected: tuple[str, int]) -> None:
    assert parse_nameserver(spec) == expected


@pytest.mark.parametrize("spec", ["ns.example:53", "127.0.0.1:0", "127.0.0.1:x", "[::1", "[::1]x"])
def test_parse_nameserver_rejects(spec: str) -> None:
    with pytest.raises(ValueError):
        parse_nameserver(spec)
