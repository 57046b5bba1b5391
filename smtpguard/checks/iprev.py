"""`iprev`: forward-confirmed reverse DNS of the client address (RFC 8601 §3 "iprev").

Invariants:
- PTR names are looked up (at most `max_names`), then each name's A (IPv4 client) or AAAA
  (IPv6 client); `pass` when a name resolves back to the client address, and details["name"]
  is that verified name (the first in PTR order).
- No PTR at all is `none`; PTR names none of which resolve back is `fail`.
- DNS failures are `temperror`, except that one confirmed name is enough for `pass`, and a
  forward-lookup failure only matters when no other name confirmed.
"""

from __future__ import annotations

import asyncio
import ipaddress

from smtpguard.checks.base import CheckBase, CheckContext, CheckOptions, CheckResult
from smtpguard.errors import DNSError
from smtpguard.stage import Scope, Stage


class Options(CheckOptions):
    max_names: int = 10  # PTR names to try (like RFC 7208's PTR limit)


class IprevCheck(CheckBase):
    name = "iprev"
    stage = Stage.CONNECT
    scope = Scope.CONNECTION
    Options = Options
    OUTCOMES = ("pass", "fail", "temperror", "none")

    async def run(self, ctx: CheckContext) -> CheckResult:
        assert isinstance(self.options, Options)
        ip = ctx.session.client_ip
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        resolver = ctx.env.dns
        address = str(ip)
        try:
            names = await resolver.lookup_ptr(address)
        except DNSError:
            return CheckResult.of(self.outcome("temperror"), result="temperror", reason="PTR lookup failed")
        names = list(dict.fromkeys(n.rstrip(".").lower() for n in names if n))[: self.options.max_names]
        if not names:
            return CheckResult.of(self.outcome("none"), result="none", reason="no PTR record")
        forward = resolver.lookup_a if ip.version == 4 else resolver.lookup_aaaa
        found = await asyncio.gather(*(forward(n) for n in names), return_exceptions=True)
        temp = False
        for name, addresses in zip(names, found, strict=True):
            if isinstance(addresses, DNSError):
                temp = True
            elif isinstance(addresses, BaseException):
                raise addresses
            elif any(_same(a, ip) for a in addresses):
                return CheckResult.of(self.outcome("pass"), result="pass", name=name)
        if temp:
            return CheckResult.of(self.outcome("temperror"), result="temperror", reason="forward lookup failed")
        return CheckResult.of(self.outcome("fail"), result="fail", reason="PTR name does not resolve back")


def _same(text: str, ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    try:
        return ipaddress.ip_address(text) == ip
    except ValueError:
        return False


CHECK = IprevCheck
