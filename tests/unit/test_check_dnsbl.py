"""dnsbl / dnswl / rhsbl through a fake resolver: codes, errors, IPv6, health, no key leaks."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Mapping
from typing import Any

import pytest
from pydantic import ValidationError

from smtpguard import metrics
from smtpguard.checks.base import CheckContext, CheckEnv, CheckResult
from smtpguard.checks.dnsbl import DNSBLCheck
from smtpguard.checks.dnswl import DNSWLCheck
from smtpguard.checks.registry import CheckRegistry
from smtpguard.checks.rhsbl import RHSBLCheck
from smtpguard.dnslist import reverse_name
from smtpguard.errors import ConfigError, DNSError
from smtpguard.facts import Session, Transaction

KEY = "s3cr3tdqskey0123456789abcd"


class FakeResolver:
    """A records and TXT records by name; names in `failing` raise DNSError (with the name)."""

    def __init__(self, a: Mapping[str, list[str]] | None = None, txt: Mapping[str, list[bytes]] | None = None,
                 failing: set[str] | None = None, everything: list[str] | None = None) -> None:
        self.a = dict(a or {})
        self.txt = dict(txt or {})
        self.failing = failing or set()
        self.everything = everything
        self.queries: list[str] = []

    async def lookup_a(self, name: str) -> list[str]:
        self.queries.append(name)
        if name in self.failing:
            raise DNSError(f"timeout resolving {name}")  # a careless resolver: the name is in the text
        if self.everything is not None:
            return list(self.everything)
        return list(self.a.get(name, []))

    async def lookup_txt(self, name: str) -> list[bytes]:
        if name in self.failing:
            raise DNSError(f"timeout resolving {name}")
        return list(self.txt.get(name, []))


def make(cls: Any, options: dict[str, Any], resolver: FakeResolver) -> Any:
    env = CheckEnv(hostname="mx.test", dns=resolver)
    return cls(cls.Options.model_validate(options), env)


def ctx(check: Any, ip: str = "192.0.2.1", *, helo: str | None = None, rdns: str | None = None,
        sender: str | None = None) -> CheckContext:
    session = Session(id="s1", listener="mx", client_ip=ipaddress.ip_address(ip), client_port=25, helo=helo,
                      client_name=rdns)
    tx = Transaction(id="t1", sender=sender) if sender is not None else None
    return CheckContext(stage=check.stage, session=session, transaction=tx, env=check.env)


ZEN = {"zone": "zen.example", "listed_codes": ["127.0.0.2-127.0.0.11"], "error_codes": ["127.255.255.0/24"],
       "weights": {"127.0.0.2": 5, "127.0.0.10-127.0.0.11": 1}, "probe_interval": 0}


def test_reverse_names() -> None:
    assert reverse_name(ipaddress.ip_address("192.0.2.1")) == "1.2.0.192"
    assert reverse_name(ipaddress.ip_address("::ffff:192.0.2.1")) == "1.2.0.192"
    assert reverse_name(ipaddress.ip_address("2001:db8::1")) == ".".join("1" + "0" * 23 + "8bd01002")


async def test_listed_with_weights_and_score() -> None:
    r = FakeResolver(a={"1.2.0.192.zen.example": ["127.0.0.2", "127.0.0.10"]},
                     txt={"1.2.0.192.zen.example": [b"listed, see https://example/q"]})
    check = make(DNSBLCheck, {"zones": {"zen": ZEN}}, r)
    result: CheckResult = await check.run(ctx(check))
    assert result.outcomes == {"dnsbl.listed", "dnsbl.zen.listed"}
    assert result.score == 6
    assert result.details["zen_reason"] == "listed, see https://example/q"
    assert result.template_fields == {"zone": "zen"}  # the TXT reason is not allowed by default
    assert result.outcomes <= check.declared_outcomes()


async def test_not_listed_and_answers_outside_listed_codes_are_no_listing() -> None:
    r = FakeResolver(a={"1.2.0.192.zen.example": ["127.0.0.50"]})
    check = make(DNSBLCheck, {"zones": {"zen": ZEN}}, r)
    assert (await check.run(ctx(check))).outcomes == {"dnsbl.not_listed"}
    assert (await check.run(ctx(check, "192.0.2.99"))).outcomes == {"dnsbl.not_listed"}


async def test_spamhaus_error_code_is_an_error_never_a_listing(caplog: pytest.LogCaptureFixture) -> None:
    r = FakeResolver(a={"1.2.0.192.zen.example": ["127.255.255.254"]})
    check = make(DNSBLCheck, {"zones": {"zen": ZEN}}, r)
    result = await check.run(ctx(check))
    assert result.outcomes == {"dnsbl.error", "dnsbl.zen.error"}
    assert result.score == 0
    assert "error code" in caplog.text


async def test_dns_failure_is_an_error_outcome_and_other_zones_still_count() -> None:
    r = FakeResolver(a={"1.2.0.192.other.example": ["127.0.0.2"]}, failing={"1.2.0.192.zen.example"})
    check = make(DNSBLCheck, {"zones": {"zen": ZEN, "other": {"zone": "other.example", "probe_interval": 0}}}, r)
    result = await check.run(ctx(check))
    assert result.outcomes == {"dnsbl.error", "dnsbl.zen.error", "dnsbl.listed", "dnsbl.other.listed"}
    assert result.score == 1  # default weight


async def test_ipv6_nibble_query() -> None:
    name = ".".join(reversed("20010db8000000000000000000000001")) + ".zen.example"
    r = FakeResolver(a={name: ["127.0.0.3"]})
    check = make(DNSBLCheck, {"zones": {"zen": ZEN}}, r)
    result = await check.run(ctx(check, "2001:db8::1"))
    assert result.outcomes == {"dnsbl.listed", "dnsbl.zen.listed"}
    assert r.queries[0] == name


async def test_txt_reason_reaches_templates_only_when_allowed() -> None:
    qname = "1.2.0.192.zen.example"
    r = FakeResolver(a={qname: ["127.0.0.2"]}, txt={qname: [b"Listed\x07 by ", b"us"]})
    check = make(DNSBLCheck, {"zones": {"zen": {**ZEN, "txt_reason_in_reply": True}}}, r)
    result = await check.run(ctx(check))
    assert result.template_fields == {"dnsbl_reason": "Listed  by  us", "reason": "Listed  by  us", "zone": "zen"}
    check = make(DNSBLCheck, {"zones": {"zen": {**ZEN, "txt_reason": False}}}, r)
    result = await check.run(ctx(check))
    assert "zen_reason" not in result.details and "reason" not in result.template_fields


async def test_query_key_never_leaks(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    zone = {**ZEN, "zone": "zen.dq.example", "query_key": KEY, "txt_reason_in_reply": True}
    listed = f"1.2.0.192.{KEY}.zen.dq.example"
    r = FakeResolver(a={listed: ["127.0.0.2"], f"2.2.0.192.{KEY}.zen.dq.example": ["127.255.255.254"]},
                     txt={listed: [f"see https://lookup/{KEY}/x".encode()]},
                     failing={f"3.2.0.192.{KEY}.zen.dq.example"})
    check = make(DNSBLCheck, {"zones": {"zen": zone}}, r)
    results = [await check.run(ctx(check, ip)) for ip in ("192.0.2.1", "192.0.2.2", "192.0.2.3", "192.0.2.4")]
    assert results[0].outcomes == {"dnsbl.listed", "dnsbl.zen.listed"}
    assert results[1].outcomes == {"dnsbl.error", "dnsbl.zen.error"}
    assert results[2].outcomes == {"dnsbl.error", "dnsbl.zen.error"}
    assert r.queries[0] == listed  # the key is used where it belongs
    texts = [repr(check.options), str(check.options), repr(check.lists._zones)]
    for res in results:
        texts += [*res.details.values(), *res.details.keys(), *res.template_fields.values(), *res.outcomes]
    texts += [rec.getMessage() for rec in caplog.records]
    assert caplog.records  # the error code and the DNS failure were logged
    assert all(KEY not in t for t in texts), [t for t in texts if KEY in t]
    assert results[0].template_fields["dnsbl_reason"] == "see https://lookup/[key]/x"


async def test_config_errors_do_not_echo_the_key() -> None:
    registry = CheckRegistry([DNSBLCheck])
    env = CheckEnv(hostname="mx.test")
    for zone in ({**ZEN, "query_key": "bad key!" + KEY}, {"query_key": KEY}, {**ZEN, "query_key": KEY, "x": 1}):
        with pytest.raises(ConfigError) as exc:
            registry.create("dnsbl", {"zones": {"zen": zone}}, env, file="policy.yaml", line=3)
        assert KEY not in str(exc.value)


async def test_probe_marks_zone_listing_everything_unhealthy_then_recovers(caplog: pytest.LogCaptureFixture) -> None:
    r = FakeResolver(everything=["127.0.0.2"])
    check = make(DNSBLCheck, {"zones": {"zen": ZEN}}, r)
    assert await check.lists.probe(r, "zen") is False
    assert metrics.DNSBL_ZONE_HEALTHY.labels("dnsbl/zen")._value.get() == 0
    assert (await check.run(ctx(check))).outcomes == {"dnsbl.error", "dnsbl.zen.error"}
    r.everything = None
    r.a = {"2.0.0.127.zen.example": ["127.0.0.2"]}
    assert await check.lists.probe(r, "zen") is True
    assert metrics.DNSBL_ZONE_HEALTHY.labels("dnsbl/zen")._value.get() == 1
    assert (await check.run(ctx(check))).outcomes == {"dnsbl.not_listed"}
    assert sum("unhealthy" in rec.getMessage() for rec in caplog.records) == 1


async def test_probe_marks_zone_listing_nothing_unhealthy_and_dns_failure_changes_nothing() -> None:
    r = FakeResolver()
    check = make(DNSBLCheck, {"zones": {"zen": ZEN}}, r)
    assert await check.lists.probe(r, "zen") is False
    r.failing = {"2.0.0.127.zen.example"}
    assert await check.lists.probe(r, "zen") is None
    assert not check.lists.healthy("zen")


async def test_start_runs_first_probe_and_close_stops_it() -> None:
    r = FakeResolver(everything=["127.0.0.2"])
    check = make(DNSBLCheck, {"zones": {"zen": {**ZEN, "probe_interval": 3600}}}, r)
    await check.start()
    for _ in range(100):
        if not check.lists.healthy("zen"):
            break
        await asyncio.sleep(0)
    assert not check.lists.healthy("zen")
    await check.close()
    assert not check.lists._tasks


def test_zone_names_must_not_collide_with_outcomes() -> None:
    for bad in ("listed", "error", "Zen", "a.b"):
        with pytest.raises(ValidationError):
            DNSBLCheck.Options.model_validate({"zones": {bad: ZEN}})


async def test_dnswl_uses_negative_default_weights() -> None:
    r = FakeResolver(a={"1.2.0.192.wl.example": ["127.0.10.2"]})
    check = make(DNSWLCheck, {"zones": {"swl": {"zone": "wl.example", "probe_interval": 0}}}, r)
    result = await check.run(ctx(check))
    assert result.outcomes == {"dnswl.listed", "dnswl.swl.listed"}
    assert result.score == -1


async def test_rhsbl_targets_and_per_zone_outcomes() -> None:
    r = FakeResolver(a={"bad.example.dbl.example": ["127.0.1.2"], "spammy.test.dbl.example": ["127.0.1.2"]})
    zones = {"dbl": {"zone": "dbl.example", "listed_codes": ["127.0.1.2-127.0.1.254"], "probe_interval": 0}}
    check = make(RHSBLCheck, {"zones": zones}, r)
    result = await check.run(ctx(check, helo="spammy.test", rdns="spammy.test", sender="x@Bad.Example"))
    assert result.outcomes == {"rhsbl.listed", "rhsbl.dbl.listed", "rhsbl.sender.listed", "rhsbl.dbl.sender.listed",
                               "rhsbl.helo.listed", "rhsbl.dbl.helo.listed", "rhsbl.rdns.listed",
                               "rhsbl.dbl.rdns.listed"}
    assert result.outcomes <= check.declared_outcomes()
    assert sorted(r.queries) == ["bad.example.dbl.example", "spammy.test.dbl.example"]  # helo = rdns: one query
    result = await check.run(ctx(check, helo="[192.0.2.1]", sender=""))
    assert result.outcomes == {"rhsbl.not_listed"}
    result = await check.run(ctx(check, helo="192.0.2.1", rdns="ok.test", sender="a@fine.test"))
    assert result.outcomes == {"rhsbl.not_listed"}


async def test_rhsbl_probe_uses_domain_test_points() -> None:
    r = FakeResolver(a={"test.dbl.example": ["127.0.1.2"]})
    zones = {"dbl": {"zone": "dbl.example", "listed_codes": ["127.0.1.2-127.0.1.254"], "probe_interval": 0}}
    check = make(RHSBLCheck, {"zones": zones}, r)
    assert await check.lists.probe(r, "dbl") is True
    assert "invalid.dbl.example" in r.queries
