"""`helo`: what the HELO/EHLO name says about the client (Haraka helo.checks, Postfix
reject_*_helo_hostname), as outcomes; rules decide.

Outcomes (several can hold at once; `ok` only when none of the findings below holds):
- `helo.invalid_syntax`: empty, or neither a hostname (RFC 5321 letters/digits/hyphens,
  labels of 1-63, at most 253 characters) nor an address literal;
- `helo.not_fqdn`: a valid name without a dot (`localhost`, `PC123`);
- `helo.bare_ip`: an IP address written without brackets (`192.0.2.1`);
- `helo.literal`: an address literal (`[192.0.2.1]`, `[IPv6:2001:db8::1]`) equal to the
  client address; `helo.literal_mismatch`: an address literal that is not the client address;
- `helo.claims_us`: our own hostname, or one of our addresses (bare or literal), from a client
  that is not us (`CheckEnv.hostname` / `local_addresses`);
- `helo.dynamic`: a name matching one of `dynamic_patterns` (regexes, case-insensitive;
  defaults catch names with an embedded IP address and the usual dsl/dhcp/pool words);
- with `forward_dns: true` only: `helo.no_forward_dns` (the name has no A/AAAA),
  `helo.forward_mismatch` (it resolves, but not to the client address), `helo.dns_error`
  (the lookup failed temporarily: a `DNSError` is an outcome, never an exception);
- `helo.ok`: a syntactically valid FQDN with no finding above.

Invariants: pure except the optional forward lookup through `ctx.env.dns`; the result depends
only on the HELO name, the client address and the options, so the check is `volatile` (cheap;
recomputed when a client says HELO again after STARTTLS; DNS answers are cached by the
resolver). The client-controlled name reaches details only sanitised.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any, ClassVar

from pydantic import field_validator

from smtpguard.checks.base import CheckBase, CheckContext, CheckOptions, CheckResult
from smtpguard.errors import DNSError
from smtpguard.protocol.address import is_valid_domain, parse_address_literal
from smtpguard.reply import sanitize_text
from smtpguard.stage import Scope, Stage

DEFAULT_DYNAMIC = (
    r"\d{1,3}[-.x]\d{1,3}[-.x]\d{1,3}[-.x]\d{1,3}",  # an embedded IPv4 address: 192-0-2-1.isp.example
    # access-network words, only where they look generated (followed by a digit or a separator
    # and more labels); "client", "user", "res" alone name too many real mail servers
    r"(^|[.-])(dyn|dynamic|dhcp|dialup|dial-up|ppp|pppoe|pool|dsl|adsl|xdsl|vdsl|cable|cpe|broadband|"
    r"residential)([.-]|\d)",
)


class Options(CheckOptions):
    dynamic_patterns: tuple[str, ...] = DEFAULT_DYNAMIC
    forward_dns: bool = False  # look the name up (A/AAAA) and compare with the client address

    @field_validator("dynamic_patterns")
    @classmethod
    def _compile(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for pattern in value:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"bad regex {pattern!r}: {exc}") from None
        return value


def _plain(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


class HeloCheck(CheckBase):
    name: ClassVar[str] = "helo"
    stage: ClassVar[Stage] = Stage.HELO
    scope: ClassVar[Scope] = Scope.CONNECTION
    volatile: ClassVar[bool] = True
    Options: ClassVar[type[CheckOptions]] = Options
    OUTCOMES: ClassVar[tuple[str, ...]] = (
        "invalid_syntax", "not_fqdn", "bare_ip", "literal_mismatch", "literal", "claims_us", "dynamic", "ok",
        "no_forward_dns", "forward_mismatch", "dns_error")

    def __init__(self, options: CheckOptions, env: Any) -> None:
        super().__init__(options, env)
        assert isinstance(options, Options)
        self._dynamic = [re.compile(p, re.IGNORECASE) for p in options.dynamic_patterns]
        self._our_names = {env.hostname.lower().rstrip(".")} if env.hostname else set()
        self._our_ips = set()
        for a in env.local_addresses:
            try:
                self._our_ips.add(_plain(ipaddress.ip_address(a)))
            except ValueError:
                continue

    async def run(self, ctx: CheckContext) -> CheckResult:
        helo = (ctx.session.helo or "").strip()
        client = _plain(ctx.session.client_ip)
        found = self.classify(helo, client)
        if "." in helo and not found & {"invalid_syntax", "bare_ip", "literal", "literal_mismatch"}:
            found |= await self._forward(helo, client, ctx)
        found = found or {"ok"}
        return CheckResult(frozenset(self.outcome(o) for o in found), {"helo": sanitize_text(helo, 255)})

    def classify(self, helo: str, client: ipaddress.IPv4Address | ipaddress.IPv6Address) -> set[str]:
        """Every finding decidable without DNS, as short names (empty = a clean FQDN)."""
        if not helo:
            return {"invalid_syntax"}
        if helo.startswith("[") and helo.endswith("]"):
            literal = parse_address_literal(helo)
            if literal is None:
                return {"invalid_syntax"}
            literal = _plain(literal)
            found = {"literal" if literal == client else "literal_mismatch"}
            if literal in self._our_ips and literal != client:
                found.add("claims_us")
            return found
        try:
            bare = _plain(ipaddress.ip_address(helo))
        except ValueError:
            bare = None
        if bare is not None:
            return {"bare_ip", "claims_us"} if bare in self._our_ips and bare != client else {"bare_ip"}
        if not helo.isascii() or not is_valid_domain(helo):
            return {"invalid_syntax"}
        name = helo.lower().rstrip(".")
        found = set()
        if "." not in name:
            found.add("not_fqdn")
        if name in self._our_names and client not in self._our_ips:
            found.add("claims_us")
        if any(p.search(name) for p in self._dynamic):
            found.add("dynamic")
        return found

    async def _forward(self, helo: str, client: ipaddress.IPv4Address | ipaddress.IPv6Address,
                       ctx: CheckContext) -> set[str]:
        assert isinstance(self.options, Options)
        if not self.options.forward_dns or ctx.env.dns is None:
            return set()
        name = helo.rstrip(".")
        lookup = ctx.env.dns.lookup_a if client.version == 4 else ctx.env.dns.lookup_aaaa
        try:
            addresses = await lookup(name)
        except DNSError:
            return {"dns_error"}
        if not addresses:
            other = ctx.env.dns.lookup_aaaa if client.version == 4 else ctx.env.dns.lookup_a
            try:
                addresses = await other(name)
            except DNSError:
                return {"dns_error"}
            return {"forward_mismatch"} if addresses else {"no_forward_dns"}
        for a in addresses:
            try:
                if _plain(ipaddress.ip_address(a)) == client:
                    return set()
            except ValueError:
                continue
        return {"forward_mismatch"}


CHECK = HeloCheck
