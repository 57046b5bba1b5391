"""`DNSResolver`: the one DNS client of a process (dnspython), plus a blocking facade for threads.

Invariants:
- One async resolver and one blocking resolver share ONE `dns.resolver.LRUCache` (thread-safe,
  TTL respected, NXDOMAIN and NODATA cached), so pyspf running in threads and the async checks
  see the same answers.
- Every query is absolute (`search=False`) and bounded by `timeout` seconds in total.
- The contract of `smtpguard.dns.Resolver` holds for both faces: NXDOMAIN / NODATA / a name that
  cannot exist give `[]`; timeout, SERVFAIL, REFUSED and network errors raise `DNSError`.
  No dnspython exception escapes this module.
- The blocking facade (`.sync`) is only ever called inside the resolver's own thread pool
  (`run_blocking`); the event loop never blocks on DNS. `close()` shuts that pool down.
- Metrics: `DNS_QUERIES{type,result}` per query (`cached` when the answer came from the cache),
  `DNS_SECONDS{type}` for cache misses only. Labels never carry names.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, TypeVar

import dns.asyncresolver
import dns.exception
import dns.name
import dns.nameserver
import dns.rdataclass
import dns.rdatatype
import dns.resolver
import dns.reversename

from smtpguard.errors import DNSError
from smtpguard.metrics import DNS_QUERIES, DNS_SECONDS, child

T = TypeVar("T")

__all__ = ["BlockingResolver", "DNSResolver", "SyncLookups", "parse_nameserver"]


class SyncLookups(Protocol):
    """The blocking twin of `smtpguard.dns.Resolver` (same contract, same names)."""

    def lookup_a(self, name: str) -> list[str]: ...
    def lookup_aaaa(self, name: str) -> list[str]: ...
    def lookup_txt(self, name: str) -> list[bytes]: ...
    def lookup_mx(self, name: str) -> list[tuple[int, str]]: ...
    def lookup_ptr(self, address: str) -> list[str]: ...


class BlockingResolver(Protocol):
    """A Resolver that also offers blocking lookups and a thread pool to run them in."""

    @property
    def sync(self) -> SyncLookups: ...

    async def run_blocking(self, fn: Callable[..., T], /, *args: Any) -> T: ...


def parse_nameserver(spec: str) -> tuple[str, int]:
    """`"127.0.0.1:5353"` -> ("127.0.0.1", 5353); `"[::1]:53"`, `"::1"` and `"10.0.0.1"` work too."""
    spec = spec.strip()
    host, port = spec, 53
    if spec.startswith("["):
        host, sep, rest = spec[1:].partition("]")
        if not sep:
            raise ValueError(f"bad nameserver {spec!r}")
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"bad nameserver {spec!r}")
            port = int(rest[1:])
    elif spec.count(":") == 1:
        host, _, p = spec.partition(":")
        port = int(p)
    ipaddress.ip_address(host)  # raises ValueError for a hostname: nameservers are addresses
    if not 0 < port < 65536:
        raise ValueError(f"bad nameserver port in {spec!r}")
    return host, port


def _configure(resolver: dns.resolver.BaseResolver, nameservers: list[str] | None, timeout: float,
               cache: dns.resolver.LRUCache) -> None:
    if nameservers is not None:
        resolver.nameservers = [dns.nameserver.Do53Nameserver(h, p) for h, p in map(parse_nameserver, nameservers)]
    resolver.search = []
    resolver.use_search_by_default = False
    resolver.timeout = min(timeout, 2.0)  # per attempt; retries happen within the lifetime
    resolver.lifetime = timeout
    resolver.cache = cache


def _qname(name: str) -> dns.name.Name | None:
    """An absolute name, or None when `name` cannot exist in the DNS (bad label, too long)."""
    try:
        return dns.name.from_text(name.strip(), origin=dns.name.root)
    except (dns.exception.DNSException, UnicodeError, ValueError):
        return None


def _ptr_name(address: str) -> dns.name.Name:
    return dns.reversename.from_address(str(ipaddress.ip_address(address)))


class _Outcome:
    """Classifies one query for metrics and translates dnspython errors (shared by both faces)."""

    __slots__ = ("cached", "rdtype", "start")

    def __init__(self, cache: dns.resolver.LRUCache, qname: dns.name.Name, rdtype: dns.rdatatype.RdataType) -> None:
        self.rdtype = rdtype
        # peek: an entry for the exact type (answer or NODATA) or a cached NXDOMAIN (type ANY)
        self.cached = any(
            cache.get((qname, t, dns.rdataclass.IN)) is not None for t in (rdtype, dns.rdatatype.ANY)
        )
        self.start = time.perf_counter()

    def done(self, result: str) -> None:
        label = dns.rdatatype.to_text(self.rdtype)
        if self.cached:
            child(DNS_QUERIES, label, "cached").inc()
            return
        child(DNS_QUERIES, label, result).inc()
        child(DNS_SECONDS, label).observe(time.perf_counter() - self.start)

    def answer(self, answer: dns.resolver.Answer) -> dns.resolver.Answer | None:
        self.done("ok" if answer.rrset is not None else "nodata")
        return answer if answer.rrset is not None else None

    def error(self, exc: BaseException) -> None:
        """Return normally for 'does not exist', raise DNSError for a temporary failure."""
        if isinstance(exc, dns.resolver.NXDOMAIN):
            self.done("nxdomain")
            return
        if isinstance(exc, dns.resolver.NoAnswer):
            self.done("nodata")
            return
        if isinstance(exc, dns.exception.Timeout):
            self.done("timeout")
            raise DNSError("DNS timeout") from None
        if isinstance(exc, dns.resolver.NoNameservers):
            self.done("servfail")
            raise DNSError("DNS server failure") from None
        self.done("error")
        raise DNSError(f"DNS error ({type(exc).__name__})") from None


def _addresses(answer: dns.resolver.Answer | None) -> list[str]:
    return [] if answer is None else [r.address for r in answer]


def _txt(answer: dns.resolver.Answer | None) -> list[bytes]:
    return [] if answer is None else [b"".join(r.strings) for r in answer]


def _mx(answer: dns.resolver.Answer | None) -> list[tuple[int, str]]:
    return [] if answer is None else [(r.preference, r.exchange.to_text(omit_final_dot=True)) for r in answer]


def _targets(answer: dns.resolver.Answer | None) -> list[str]:
    return [] if answer is None else [r.target.to_text(omit_final_dot=True) for r in answer]


_A, _AAAA, _TXT, _MX, _PTR = (dns.rdatatype.A, dns.rdatatype.AAAA, dns.rdatatype.TXT, dns.rdatatype.MX,
                              dns.rdatatype.PTR)


class SyncResolver:
    """Blocking lookups on the shared cache. Call only from a worker thread (see module doc)."""

    def __init__(self, nameservers: list[str] | None, timeout: float, cache: dns.resolver.LRUCache) -> None:
        self._cache = cache
        self._r = dns.resolver.Resolver(configure=nameservers is None)
        _configure(self._r, nameservers, timeout, cache)

    def _query(self, qname: dns.name.Name | None, rdtype: dns.rdatatype.RdataType) -> dns.resolver.Answer | None:
        if qname is None:
            return None
        outcome = _Outcome(self._cache, qname, rdtype)
        try:
            answer = self._r.resolve(qname, rdtype, search=False, raise_on_no_answer=False)
        except Exception as exc:  # translated right here
            outcome.error(exc)
            return None
        return outcome.answer(answer)

    def lookup_a(self, name: str) -> list[str]:
        return _addresses(self._query(_qname(name), _A))

    def lookup_aaaa(self, name: str) -> list[str]:
        return _addresses(self._query(_qname(name), _AAAA))

    def lookup_txt(self, name: str) -> list[bytes]:
        return _txt(self._query(_qname(name), _TXT))

    def lookup_mx(self, name: str) -> list[tuple[int, str]]:
        return _mx(self._query(_qname(name), _MX))

    def lookup_ptr(self, address: str) -> list[str]:
        return _targets(self._query(_ptr_name(address), _PTR))


class DNSResolver:
    """Async `Resolver` + blocking `.sync` facade + the thread pool the facade runs in."""

    def __init__(self, nameservers: list[str] | None = None, timeout: float = 3.0, cache_size: int = 10000,
                 threads: int = 32) -> None:
        # note: nameservers=None reads /etc/resolv.conf here (construction time, not on the hot path)
        self.cache = dns.resolver.LRUCache(cache_size)
        self.timeout = timeout
        self._r = dns.asyncresolver.Resolver(configure=nameservers is None)
        _configure(self._r, nameservers, timeout, self.cache)
        self._sync = SyncResolver(nameservers, timeout, self.cache)
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="smtpguard-dns")

    @property
    def sync(self) -> SyncResolver:
        return self._sync

    async def run_blocking(self, fn: Callable[..., T], /, *args: Any) -> T:
        """Run `fn(*args)` in the resolver's own pool (for pyspf and other blocking DNS users)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(fn, *args))

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def _query(self, qname: dns.name.Name | None,
                     rdtype: dns.rdatatype.RdataType) -> dns.resolver.Answer | None:
        if qname is None:
            return None
        outcome = _Outcome(self.cache, qname, rdtype)
        try:
            answer = await self._r.resolve(qname, rdtype, search=False, raise_on_no_answer=False)
        except Exception as exc:  # translated right here
            outcome.error(exc)
            return None
        return outcome.answer(answer)

    async def lookup_a(self, name: str) -> list[str]:
        return _addresses(await self._query(_qname(name), _A))

    async def lookup_aaaa(self, name: str) -> list[str]:
        return _addresses(await self._query(_qname(name), _AAAA))

    async def lookup_txt(self, name: str) -> list[bytes]:
        return _txt(await self._query(_qname(name), _TXT))

    async def lookup_mx(self, name: str) -> list[tuple[int, str]]:
        return _mx(await self._query(_qname(name), _MX))

    async def lookup_ptr(self, address: str) -> list[str]:
        return _targets(await self._query(_ptr_name(address), _PTR))
