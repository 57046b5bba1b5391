"""The spf check: results, identities, domain validation, limits, both resolver faces."""

from __future__ import annotations

import threading

import pytest
from auth_fakes import FakeBlockingResolver, FakeResolver, make_ctx

from smtpguard.checks.base import CheckEnv
from smtpguard.checks.spf import CHECK, Options, sanitize, spf_domain


def zone() -> list[tuple[str, str, object]]:
    recs: list[tuple[str, str, object]] = [
        ("pass.test", "TXT", "v=spf1 ip4:192.0.2.0/24 -all"),
        ("fail.test", "TXT", "v=spf1 -all exp=exp.fail.test"),
        ("exp.fail.test", "TXT", "You; are\r\nnot %{i} allowed"),
        ("soft.test", "TXT", "v=spf1 ~all"),
        ("neutral.test", "TXT", "v=spf1 ?all"),
        ("nospf.test", "TXT", "google-site-verification=x"),
        ("two.test", "TXT", "v=spf1 -all"),
        ("two.test", "TXT", "v=spf1 +all"),
        ("syntax.test", "TXT", "v=spf1 ip4:300.1.1.1 -all"),
        ("many.test", "TXT", "v=spf1 " + " ".join(f"include:i{i}.test" for i in range(11)) + " -all"),
        ("void.test", "TXT", "v=spf1 a:v1.test a:v2.test a:v3.test -all"),
        ("temp.test", "TXT", "v=spf1 include:down.test -all"),
        ("helo.test", "TXT", "v=spf1 a -all"),
        ("helo.test", "A", "192.0.2.1"),
        ("mx.test", "TXT", "v=spf1 mx -all"),
        ("mx.test", "MX", (10, "mail.mx.test")),
        ("mail.mx.test", "A", "192.0.2.1"),
        ("ptr.test", "TXT", "v=spf1 ptr -all"),
        ("1.2.0.192.in-addr.arpa", "PTR", "host.ptr.test"),
        ("host.ptr.test", "A", "192.0.2.1"),
        ("v6.test", "TXT", "v=spf1 ip6:2001:db8::/32 -all"),
    ]
    recs += [(f"i{i}.test", "TXT", "v=spf1 ?all") for i in range(11)]
    return recs


def resolver(blocking: bool = True) -> FakeResolver:
    cls = FakeBlockingResolver if blocking else FakeResolver
    return cls(zone(), timeouts=[("down.test", "TXT")])


async def check(sender: str, helo: str = "helo.test", ip: str = "192.0.2.1", blocking: bool = True,
                **opts: object) -> dict[str, str]:
    res = resolver(blocking)
    c = CHECK(Options(**opts), CheckEnv(hostname="mx.guard.test", dns=res))  # type: ignore[arg-type]
    result = await c.run(make_ctx(res, ip=ip, helo=helo, sender=sender))
    assert result.outcomes == {f"spf.{result.details['result']}"}
    assert result.outcomes <= c.declared_outcomes()
    await c.close()
    return dict(result.details)


@pytest.mark.parametrize(("sender", "result"), [
    ("a@pass.test", "pass"), ("a@fail.test", "fail"), ("a@soft.test", "softfail"),
    ("a@neutral.test", "neutral"), ("a@nospf.test", "none"), ("a@nxdomain.test", "none"),
    ("a@two.test", "permerror"), ("a@syntax.test", "permerror"), ("a@many.test", "permerror"),
    ("a@void.test", "permerror"), ("a@temp.test", "temperror"), ("a@mx.test", "pass"),
    ("a@ptr.test", "pass"), ("@pass.test", "pass"),
])
async def test_results(sender: str, result: str) -> None:
    details = await check(sender)
    assert details["result"] == result
    assert details["identity"] == "mailfrom"
    assert details["domain"] == sender.rpartition("@")[2]


async def test_ipv6_client() -> None:
    assert (await check("a@v6.test", ip="2001:db8::5"))["result"] == "pass"
    assert (await check("a@v6.test", ip="2001:dc8::5"))["result"] == "fail"


async def test_ipv4_mapped_client_is_checked_as_ipv4() -> None:
    assert (await check("a@pass.test", ip="::ffff:192.0.2.9"))["result"] == "pass"


async def test_null_sender_checks_helo() -> None:
    details = await check("", helo="helo.test")
    assert details == {"result": "pass", "explanation": details["explanation"], "domain": "helo.test",
                       "identity": "helo"}
    assert (await check("", helo="helo.test", ip="192.0.2.99"))["result"] == "fail"


@pytest.mark.parametrize(("sender", "helo"), [
    ("a@[192.0.2.1]", "helo.test"), ("nodomain", "helo.test"), ("a@single", "helo.test"),
    ("a@bad..test", "helo.test"), ("", "[192.0.2.1]"), ("", "localhost"), ("", ""),
    ("a@" + "x" * 64 + ".test", "helo.test"),
])
async def test_unusable_domains_are_none_without_dns(sender: str, helo: str) -> None:
    res = resolver()
    c = CHECK(Options(), CheckEnv(hostname="mx.guard.test", dns=res))
    result = await c.run(make_ctx(res, helo=helo, sender=sender))
    assert result.outcomes == {"spf.none"}
    assert res.queries == []


async def test_explanation_is_sanitised() -> None:
    details = await check("a@fail.test", ip="192.0.2.1")
    assert details["result"] == "fail"
    assert ";" not in details["explanation"] and "\r" not in details["explanation"]
    assert "192.0.2.1" in details["explanation"]


async def test_received_spf_detail_only_when_asked() -> None:
    assert "received_spf" not in await check("a@pass.test")
    details = await check("a@pass.test", received_spf=True)
    assert details["received_spf"].startswith("Pass (mx.guard.test: ")
    assert "\n" not in details["received_spf"]
    assert 'envelope-from="a@pass.test"' in details["received_spf"]


async def test_plain_async_resolver_is_bridged_from_a_worker_thread() -> None:
    assert (await check("a@pass.test", blocking=False))["result"] == "pass"
    assert (await check("a@temp.test", blocking=False))["result"] == "temperror"


async def test_pyspf_never_runs_on_the_event_loop_thread() -> None:
    loop_thread = threading.get_ident()
    threads: set[int] = set()

    class Spy(FakeBlockingResolver):
        def get(self, name: str, rtype: str, depth: int = 0) -> list[object]:
            threads.add(threading.get_ident())
            return super().get(name, rtype, depth)

    res = Spy(zone())
    c = CHECK(Options(), CheckEnv(hostname="mx.guard.test", dns=res))
    await c.run(make_ctx(res, sender="a@mx.test"))
    assert threads and loop_thread not in threads


@pytest.mark.parametrize(("identity", "domain"), [
    ("a@Example.COM.", "example.com"), ("mail.example.com", "mail.example.com"), ("a@[1.2.3.4]", None),
    ("a@-bad.test", None), ("a@under_score.test", "under_score.test"), ("", None),
])
def test_spf_domain(identity: str, domain: str | None) -> None:
    assert spf_domain(identity) == domain


def test_sanitize() -> None:
    assert sanitize("a;b\r\nc\x00") == "a?b??c?"


async def test_received_spf_with_hostile_helo_stays_one_line() -> None:
    details = await check("a@pass.test", helo='x"; spf=pass\r\nX-Evil: 1', received_spf=True)
    assert "\r" not in details["received_spf"] and "\n" not in details["received_spf"]
    assert 'helo="x\\"' in details["received_spf"]


async def test_angle_bracket_null_sender_is_the_null_sender() -> None:
    details = await check("<>", helo="helo.test")
    assert (details["identity"], details["result"]) == ("helo", "pass")
