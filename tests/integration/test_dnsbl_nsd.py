"""dnsbl / dnswl / rhsbl against a real nsd serving tests/zones/reputation/*.zone."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from realservers import NSD

from smtpguard import metrics
from smtpguard.checks.base import CheckContext, CheckEnv, CheckResult
from smtpguard.checks.dnsbl import DNSBLCheck
from smtpguard.checks.dnswl import DNSWLCheck
from smtpguard.checks.rhsbl import RHSBLCheck
from smtpguard.dns.resolver import DNSResolver
from smtpguard.facts import Session, Transaction

ZONES_DIR = Path(__file__).resolve().parent.parent / "zones" / "reputation"
DQS_KEY = "testkey0123456789"


@pytest.fixture
def nsd(nsd_factory: Callable[[Mapping[str, str]], NSD]) -> NSD:
    zones = {p.name.removesuffix(".zone"): p.read_text() for p in sorted(ZONES_DIR.glob("*.zone"))}
    return nsd_factory(zones)


@pytest.fixture
def env(nsd: NSD) -> Iterator[CheckEnv]:
    resolver = DNSResolver(nameservers=[f"127.0.0.1:{nsd.port}"], timeout=2.0)
    yield CheckEnv(hostname="mx.test", dns=resolver)
    resolver.close()


BL = {"zone": "bl.test", "listed_codes": ["127.0.0.2-127.0.0.11"], "error_codes": ["127.255.255.0/24"],
      "weights": {"127.0.0.2": 5, "127.0.0.10-127.0.0.11": 1}, "txt_reason_in_reply": True, "probe_interval": 0}


def make(cls: Any, env: CheckEnv, zones: dict[str, Any], **extra: Any) -> Any:
    return cls(cls.Options.model_validate({"zones": zones, **extra}), env)


async def run(check: Any, ip: str, *, helo: str | None = None, rdns: str | None = None,
              sender: str | None = None) -> CheckResult:
    session = Session(id="s", listener="mx", client_ip=ipaddress.ip_address(ip), client_port=25, helo=helo,
                      client_name=rdns)
    tx = Transaction(id="t", sender=sender) if sender is not None else None
    result: CheckResult = await check.run(CheckContext(stage=check.stage, session=session, transaction=tx,
                                                       env=check.env))
    return result


async def test_listed_with_weights_and_txt_reason(env: CheckEnv) -> None:
    check = make(DNSBLCheck, env, {"bl": BL})
    r = await run(check, "192.0.2.10")
    assert r.outcomes == {"dnsbl.listed", "dnsbl.bl.listed"}
    assert r.score == 5
    assert r.template_fields["dnsbl_reason"] == "Listed by bl.test, see https://bl.test/query/192.0.2.10"
    r = await run(check, "192.0.2.20")
    assert r.outcomes == {"dnsbl.listed", "dnsbl.bl.listed"}
    assert r.score == 2  # 127.0.0.10 and .11; 127.0.0.99 is outside listed_codes
    assert r.details["bl"] == "listed 127.0.0.10,127.0.0.11"


async def test_not_listed_and_error_code(env: CheckEnv) -> None:
    check = make(DNSBLCheck, env, {"bl": BL})
    assert (await run(check, "192.0.2.11")).outcomes == {"dnsbl.not_listed"}
    r = await run(check, "192.0.2.66")
    assert r.outcomes == {"dnsbl.error", "dnsbl.bl.error"}  # 127.255.255.254 is never a listing
    assert r.score == 0


async def test_ipv6_listing(env: CheckEnv) -> None:
    check = make(DNSBLCheck, env, {"bl": BL})
    assert (await run(check, "2001:db8::25")).outcomes == {"dnsbl.listed", "dnsbl.bl.listed"}
    assert (await run(check, "2001:db8::26")).outcomes == {"dnsbl.not_listed"}


async def test_dqs_key_is_used_and_never_leaks(env: CheckEnv, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    zone = {"zone": "dq.test", "query_key": DQS_KEY, "listed_codes": ["127.0.0.2-127.0.0.11"],
            "txt_reason_in_reply": True, "probe_interval": 0}
    check = make(DNSBLCheck, env, {"dq": zone})
    assert await check.lists.probe(env.dns, "dq") is True
    listed = await run(check, "192.0.2.10")
    assert listed.outcomes == {"dnsbl.listed", "dnsbl.dq.listed"}
    wrong = make(DNSBLCheck, env, {"dq": {**zone, "query_key": "wrongkey"}})
    assert (await run(wrong, "192.0.2.10")).outcomes == {"dnsbl.error", "dnsbl.dq.error"}
    texts = [*listed.details.values(), *listed.template_fields.values(), repr(check.options)]
    texts += [rec.getMessage() for rec in caplog.records]
    assert all(DQS_KEY not in t for t in texts)
    assert "[key]" in listed.template_fields["dnsbl_reason"]


async def test_zone_listing_everything_becomes_unhealthy(env: CheckEnv) -> None:
    check = make(DNSBLCheck, env, {"bl": BL, "broken": {"zone": "all.test", "probe_interval": 3600}})
    assert (await run(check, "192.0.2.11")).outcomes == {"dnsbl.listed", "dnsbl.broken.listed"}  # before probe
    await check.start()
    try:
        await _until(lambda: not check.lists.healthy("broken"))
        assert metrics.DNSBL_ZONE_HEALTHY.labels("dnsbl/broken")._value.get() == 0
        # the healthy zone answers "not listed", the broken one is an error: no dnsbl.not_listed
        assert (await run(check, "192.0.2.11")).outcomes == {"dnsbl.error", "dnsbl.broken.error"}
        assert await check.lists.probe(env.dns, "bl") is True
    finally:
        await check.close()


async def _until(pred: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.02)


async def test_unreachable_nameserver_is_an_error(silent_nameserver: Any) -> None:
    resolver = DNSResolver(nameservers=[f"127.0.0.1:{silent_nameserver.port}"], timeout=0.3)
    try:
        check = make(DNSBLCheck, CheckEnv(hostname="mx.test", dns=resolver), {"bl": BL})
        assert (await run(check, "192.0.2.10")).outcomes == {"dnsbl.error", "dnsbl.bl.error"}
    finally:
        resolver.close()


async def test_dnswl(env: CheckEnv) -> None:
    check = make(DNSWLCheck, env, {"wl": {"zone": "wl.test", "weights": {"127.0.15.3": -5}, "probe_interval": 0}})
    r = await run(check, "192.0.2.30")
    assert r.outcomes == {"dnswl.listed", "dnswl.wl.listed"}
    assert r.score == -5
    assert r.details["wl_reason"] == "trusted sender 192.0.2.30"
    assert (await run(check, "192.0.2.10")).outcomes == {"dnswl.not_listed"}
    assert await check.lists.probe(env.dns, "wl") is True


async def test_rhsbl(env: CheckEnv) -> None:
    zones = {"dbl": {"zone": "dbl.test", "listed_codes": ["127.0.1.2-127.0.1.254"],
                     "error_codes": ["127.255.255.0/24"], "probe_interval": 0}}
    check = make(RHSBLCheck, env, zones)
    assert await check.lists.probe(env.dns, "dbl") is True
    r = await run(check, "192.0.2.1", helo="evil-helo.example", rdns="mail.good.example",
                  sender="someone@Spammer.Example")
    assert r.outcomes == {"rhsbl.listed", "rhsbl.dbl.listed", "rhsbl.sender.listed", "rhsbl.dbl.sender.listed",
                          "rhsbl.helo.listed", "rhsbl.dbl.helo.listed"}
    assert r.details["dbl_reason"] == "spammer.example is a spam domain"
    r = await run(check, "192.0.2.1", helo="ok.example", rdns="evil-helo.example", sender="")
    assert r.outcomes == {"rhsbl.listed", "rhsbl.dbl.listed", "rhsbl.rdns.listed", "rhsbl.dbl.rdns.listed"}
    r = await run(check, "192.0.2.1", helo="ok.example", sender="a@ip-query.example")
    assert r.outcomes == {"rhsbl.error", "rhsbl.dbl.error"}
    assert (await run(check, "192.0.2.1", helo="ok.example", sender="a@fine.example")).outcomes == {
        "rhsbl.not_listed"}
