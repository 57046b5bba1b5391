"""The `helo` check: every outcome, literal/bare-IP handling, our own name, forward DNS."""

from __future__ import annotations

import ipaddress

import pytest

from smtpguard.checks.base import CheckContext, CheckEnv
from smtpguard.checks.helo import HeloCheck, Options
from smtpguard.errors import DNSError
from smtpguard.facts import Session
from smtpguard.stage import Stage


class FakeDNS:
    def __init__(self, a: dict[str, list[str]] | None = None, aaaa: dict[str, list[str]] | None = None,
                 fail: bool = False) -> None:
        self.a, self.aaaa, self.fail = a or {}, aaaa or {}, fail
        self.asked: list[str] = []

    async def lookup_a(self, name: str) -> list[str]:
        self.asked.append(name)
        if self.fail:
            raise DNSError("timeout")
        return self.a.get(name, [])

    async def lookup_aaaa(self, name: str) -> list[str]:
        self.asked.append(name)
        if self.fail:
            raise DNSError("timeout")
        return self.aaaa.get(name, [])


async def outcomes(helo: str | None, ip: str = "198.51.100.7", dns: FakeDNS | None = None,
                   **options: object) -> set[str]:
    env = CheckEnv(hostname="mx.example.net", local_addresses=frozenset({"192.0.2.25", "2001:db8::25"}), dns=dns)
    check = HeloCheck(Options(**options), env)  # type: ignore[arg-type]
    session = Session(id="s", listener="mx", client_ip=ipaddress.ip_address(ip), client_port=1, helo=helo)
    result = await check.run(CheckContext(Stage.HELO, session, None, env))
    assert result.outcomes <= check.declared_outcomes()
    return {o.removeprefix("helo.") for o in result.outcomes}


@pytest.mark.parametrize(("helo", "ip", "expected"), [
    ("mail.example.org", "198.51.100.7", {"ok"}),
    ("mail.example.org.", "198.51.100.7", {"ok"}),
    ("", "198.51.100.7", {"invalid_syntax"}),
    (None, "198.51.100.7", {"invalid_syntax"}),
    ("bad_name.example", "198.51.100.7", {"invalid_syntax"}),
    ("-x.example", "198.51.100.7", {"invalid_syntax"}),
    ("a" * 64 + ".example", "198.51.100.7", {"invalid_syntax"}),
    ("localhost", "198.51.100.7", {"not_fqdn"}),
    ("198.51.100.7", "198.51.100.7", {"bare_ip"}),
    ("2001:db8::1", "2001:db8::1", {"bare_ip"}),
    ("192.0.2.25", "198.51.100.7", {"bare_ip", "claims_us"}),
    ("[198.51.100.7]", "198.51.100.7", {"literal"}),
    ("[198.51.100.7]", "::ffff:198.51.100.7", {"literal"}),
    ("[IPv6:2001:db8::7]", "2001:db8::7", {"literal"}),
    ("[203.0.113.1]", "198.51.100.7", {"literal_mismatch"}),
    ("[192.0.2.25]", "198.51.100.7", {"literal_mismatch", "claims_us"}),
    ("[not-an-ip]", "198.51.100.7", {"invalid_syntax"}),
    ("[IPv6:1.2.3.4]", "198.51.100.7", {"invalid_syntax"}),
    ("MX.EXAMPLE.NET", "198.51.100.7", {"claims_us"}),
    ("mx.example.net", "192.0.2.25", {"ok"}),  # it is us (e.g. a local health check)
    ("198-51-100-7.dsl.isp.example", "198.51.100.7", {"dynamic"}),
    ("host-1.dhcp.isp.example", "198.51.100.7", {"dynamic"}),
    ("pool-72-1.isp.example", "198.51.100.7", {"dynamic"}),
    ("mail.resources.example", "198.51.100.7", {"ok"}),
])
async def test_classification(helo: str | None, ip: str, expected: set[str]) -> None:
    assert await outcomes(helo, ip) == expected


async def test_custom_dynamic_patterns() -> None:
    assert await outcomes("mta7.bulk.example", dynamic_patterns=[r"\.bulk\."]) == {"dynamic"}
    assert await outcomes("198-51-100-7.dsl.isp.example", dynamic_patterns=[]) == {"ok"}


def test_bad_dynamic_pattern_is_an_option_error() -> None:
    with pytest.raises(ValueError, match="bad regex"):
        Options(dynamic_patterns=("([",))


async def test_forward_dns_off_by_default() -> None:
    dns = FakeDNS()
    assert await outcomes("mail.example.org", dns=dns) == {"ok"}
    assert dns.asked == []


@pytest.mark.parametrize(("dns", "ip", "expected"), [
    (FakeDNS(a={"mail.example.org": ["198.51.100.7"]}), "198.51.100.7", {"ok"}),
    (FakeDNS(a={"mail.example.org": ["203.0.113.9"]}), "198.51.100.7", {"forward_mismatch"}),
    (FakeDNS(aaaa={"mail.example.org": ["2001:db8::9"]}), "198.51.100.7", {"forward_mismatch"}),
    (FakeDNS(), "198.51.100.7", {"no_forward_dns"}),
    (FakeDNS(fail=True), "198.51.100.7", {"dns_error"}),
    (FakeDNS(aaaa={"mail.example.org": ["2001:db8::7"]}), "2001:db8::7", {"ok"}),
])
async def test_forward_dns(dns: FakeDNS, ip: str, expected: set[str]) -> None:
    assert await outcomes("mail.example.org", ip, dns=dns, forward_dns=True) == expected


async def test_forward_dns_adds_to_other_findings_and_skips_literals() -> None:
    dns = FakeDNS()
    assert await outcomes("1-2-3-4.dyn.example", dns=dns, forward_dns=True) == {"dynamic", "no_forward_dns"}
    assert await outcomes("[198.51.100.7]", dns=dns, forward_dns=True) == {"literal"}
    assert dns.asked == ["1-2-3-4.dyn.example", "1-2-3-4.dyn.example"]


async def test_details_are_sanitised() -> None:
    env = CheckEnv(hostname="mx.example.net")
    check = HeloCheck(Options(), env)
    session = Session(id="s", listener="mx", client_ip=ipaddress.ip_address("192.0.2.1"), client_port=1,
                      helo="x\r\nInjected: 1")
    result = await check.run(CheckContext(Stage.HELO, session, None, env))
    assert "\n" not in result.details["helo"] and result.outcomes == {"helo.invalid_syntax"}
