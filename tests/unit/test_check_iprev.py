"""The iprev check: forward-confirmed reverse DNS (table-driven)."""

from __future__ import annotations

import pytest
from auth_fakes import FakeResolver, make_ctx, ptr_name

from smtpguard.checks.base import CheckEnv
from smtpguard.checks.iprev import CHECK, Options
from smtpguard.stage import Stage


def zone() -> FakeResolver:
    return FakeResolver([
        (ptr_name("192.0.2.1"), "PTR", "mail.example.com"),
        ("mail.example.com", "A", "192.0.2.1"),
        (ptr_name("192.0.2.2"), "PTR", "liar.example.com"),
        ("liar.example.com", "A", "198.51.100.1"),
        (ptr_name("192.0.2.3"), "PTR", "first.example.com"),  # several names, the second confirms
        (ptr_name("192.0.2.3"), "PTR", "second.example.com"),
        ("second.example.com", "A", "192.0.2.3"),
        (ptr_name("192.0.2.4"), "PTR", "slow.example.com"),
        (ptr_name("192.0.2.5"), "PTR", "slow.example.com"),
        (ptr_name("192.0.2.5"), "PTR", "ok5.example.com"),
        ("ok5.example.com", "A", "192.0.2.5"),
        (ptr_name("2001:db8::1"), "PTR", "v6.example.com"),
        ("v6.example.com", "AAAA", "2001:db8::1"),
        ("v6.example.com", "A", "2001:db8::1"),
    ], timeouts=[("slow.example.com", "A"), (ptr_name("192.0.2.6"), "PTR")])


@pytest.mark.parametrize(("ip", "outcome", "name"), [
    ("192.0.2.1", "pass", "mail.example.com"),
    ("::ffff:192.0.2.1", "pass", "mail.example.com"),
    ("192.0.2.2", "fail", None),
    ("192.0.2.3", "pass", "second.example.com"),
    ("192.0.2.4", "temperror", None),  # the only name's forward lookup timed out
    ("192.0.2.5", "pass", "ok5.example.com"),  # one confirmed name is enough
    ("192.0.2.6", "temperror", None),  # PTR lookup timed out
    ("192.0.2.7", "none", None),  # no PTR
    ("2001:db8::1", "pass", "v6.example.com"),
])
async def test_iprev(ip: str, outcome: str, name: str | None) -> None:
    res = zone()
    check = CHECK(Options(), CheckEnv(hostname="mx.guard.test", dns=res))
    result = await check.run(make_ctx(res, ip=ip, stage=Stage.CONNECT))
    assert result.outcomes == {f"iprev.{outcome}"}
    assert result.outcomes <= check.declared_outcomes()
    assert result.details.get("name") == name


async def test_ipv6_uses_aaaa_only() -> None:
    res = zone()
    check = CHECK(Options(), CheckEnv(hostname="mx.guard.test", dns=res))
    await check.run(make_ctx(res, ip="2001:db8::1", stage=Stage.CONNECT))
    assert ("v6.example.com", "A") not in res.queries


async def test_max_names_bounds_lookups() -> None:
    res = FakeResolver([(ptr_name("192.0.2.9"), "PTR", f"n{i}.example.com") for i in range(30)])
    check = CHECK(Options(max_names=5), CheckEnv(hostname="mx.guard.test", dns=res))
    result = await check.run(make_ctx(res, ip="192.0.2.9", stage=Stage.CONNECT))
    assert result.outcomes == {"iprev.fail"}
    assert sum(1 for _, t in res.queries if t == "A") == 5
