"""The DNS layer's interface. The implementation is `smtpguard.dns.resolver.DNSResolver`.

Contract for every `lookup_*`:
- a name that does not exist (NXDOMAIN) or has no record of the type (NODATA) gives `[]`;
- a temporary failure (timeout, SERVFAIL, REFUSED, network error) raises
  `smtpguard.errors.DNSError` -- callers turn that into a `temperror`/`error` outcome;
- names are absolute (no search list), results are cached per TTL with negative caching.
"""

from __future__ import annotations

from typing import Protocol


class Resolver(Protocol):
    async def lookup_a(self, name: str) -> list[str]: ...
    async def lookup_aaaa(self, name: str) -> list[str]: ...
    async def lookup_txt(self, name: str) -> list[bytes]: ...  # one item per RR, strings joined
    async def lookup_mx(self, name: str) -> list[tuple[int, str]]: ...
    async def lookup_ptr(self, address: str) -> list[str]: ...  # address is an IP literal
