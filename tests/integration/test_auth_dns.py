"""SPF, DKIM, DMARC, ARC, iprev and Authentication-Results against a REAL nsd.

The zones live in tests/zones/auth/; the DKIM/ARC public keys are generated in this test session
and substituted into the zone text before nsd starts. Temporary failures use a UDP socket that
never answers (`silent_nameserver`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import authres
import pytest
from auth_fakes import arc_seal, ed25519_key, make_ctx, make_message, rsa_key, sign
from realservers import NSD, SilentUDP

from smtpguard.authresults import build_authentication_results
from smtpguard.checks import arc, dkim, dmarc, iprev, spf
from smtpguard.checks.base import CheckBase, CheckEnv, CheckResult
from smtpguard.dns.resolver import DNSResolver
from smtpguard.stage import Stage

ZONES = Path(__file__).parents[1] / "zones" / "auth"
ID = "mx.guard.test"


def txt_strings(record: str) -> str:
    """A long TXT value as several <=250-byte quoted strings of one record."""
    return " ".join(f'"{record[i:i + 250]}"' for i in range(0, len(record), 250))


def zones() -> dict[str, str]:
    text = (ZONES / "auth.test.zone").read_text()
    text = text.replace("@@DKIM_RSA@@", txt_strings(rsa_key(2048, 7)[1]))
    text = text.replace("@@DKIM_ED@@", txt_strings(ed25519_key(7)[1]))
    text = text.replace("@@ARC_KEY@@", txt_strings(rsa_key(1024, 8)[1]))
    return {"auth.test": text, "2.0.192.in-addr.arpa": (ZONES / "2.0.192.in-addr.arpa.zone").read_text()}


@pytest.fixture
def nsd(nsd_factory: Callable[[Mapping[str, str]], NSD]) -> NSD:
    return nsd_factory(zones())


@pytest.fixture
def resolver(nsd: NSD) -> Iterator[DNSResolver]:
    r = DNSResolver([f"127.0.0.1:{nsd.port}"], timeout=2.0)
    yield r
    r.close()


@pytest.fixture
def silent_resolver(silent_nameserver: SilentUDP) -> Iterator[DNSResolver]:
    r = DNSResolver([f"127.0.0.1:{silent_nameserver.port}"], timeout=0.3)
    yield r
    r.close()


async def run(check_cls: type[CheckBase], resolver: DNSResolver, options: object = None,
              **ctx: object) -> CheckResult:
    opts = options if options is not None else check_cls.Options()
    check = check_cls(opts, CheckEnv(hostname=ID, dns=resolver))  # type: ignore[arg-type]
    try:
        result = await check.run(make_ctx(resolver, **ctx))  # type: ignore[arg-type]
    finally:
        await check.close()
    assert result.outcomes <= check.declared_outcomes()
    return result


# ---------------------------------------------------------------------------------------------
# SPF
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("sender", "helo", "expected"), [
    ("a@pass.auth.test", "x.auth.test", "pass"),
    ("a@alias.auth.test", "x.auth.test", "pass"),  # CNAME followed by the resolver
    ("a@viamx.auth.test", "x.auth.test", "pass"),
    ("a@fail.auth.test", "x.auth.test", "fail"),
    ("a@softfail.auth.test", "x.auth.test", "softfail"),
    ("a@neutral.auth.test", "x.auth.test", "neutral"),
    ("a@none.auth.test", "x.auth.test", "none"),
    ("a@nxdomain.auth.test", "x.auth.test", "none"),
    ("a@toomany.auth.test", "x.auth.test", "permerror"),
    ("a@syntax.auth.test", "x.auth.test", "permerror"),
    ("a@two.auth.test", "x.auth.test", "permerror"),
    ("", "mail.auth.test", "pass"),  # null sender: HELO identity
    ("a@[192.0.2.1]", "x.auth.test", "none"),
])
async def test_spf(resolver: DNSResolver, sender: str, helo: str, expected: str) -> None:
    result = await run(spf.CHECK, resolver, sender=sender, helo=helo, ip="192.0.2.1")
    assert result.outcomes == {f"spf.{expected}"}, result.details


async def test_spf_temperror_when_the_nameserver_is_silent(silent_resolver: DNSResolver) -> None:
    result = await run(spf.CHECK, silent_resolver, sender="a@pass.auth.test", ip="192.0.2.1")
    assert result.outcomes == {"spf.temperror"}


# ---------------------------------------------------------------------------------------------
# DKIM
# ---------------------------------------------------------------------------------------------

def signed(body: bytes = b"Hello.\r\n", from_addr: str = "alice@auth.test") -> bytes:
    msg = make_message(from_addr=from_addr, body=body)
    msg = sign(msg, "auth.test", "rsa", rsa_key(2048, 7)[0])
    return sign(msg, "auth.test", "ed", ed25519_key(7)[0], algorithm=b"ed25519-sha256")


async def test_dkim_rsa_and_ed25519_pass(resolver: DNSResolver) -> None:
    result = await run(dkim.CHECK, resolver, raw=signed(), stage=Stage.DATA)
    assert result.outcomes == {"dkim.pass"}
    assert {result.details["sig0.algorithm"], result.details["sig1.algorithm"]} == {"ed25519-sha256",
                                                                                    "rsa-sha256"}


@pytest.mark.parametrize("tamper", [
    lambda raw: raw.replace(b"Subject: test", b"Subject: changed"),
    lambda raw: raw.replace(b"Hello.", b"Hellp."),
], ids=["header", "body"])
async def test_dkim_tampered_fails(resolver: DNSResolver, tamper: Callable[[bytes], bytes]) -> None:
    result = await run(dkim.CHECK, resolver, raw=tamper(signed()), stage=Stage.DATA)
    assert result.outcomes == {"dkim.fail"}


async def test_dkim_one_passes_one_fails(resolver: DNSResolver) -> None:
    msg = sign(make_message(), "auth.test", "rsa", rsa_key(2048, 7)[0])
    msg = sign(msg, "auth.test", "ed", ed25519_key(99)[0], algorithm=b"ed25519-sha256")  # not the published key
    result = await run(dkim.CHECK, resolver, raw=msg, stage=Stage.DATA)
    assert result.outcomes == {"dkim.pass", "dkim.fail"}
    assert result.details["pass_domains"] == "auth.test"


async def test_dkim_missing_key_and_dns_timeout(resolver: DNSResolver, silent_resolver: DNSResolver) -> None:
    msg = sign(make_message(), "auth.test", "nokey", rsa_key(1024)[0])
    assert (await run(dkim.CHECK, resolver, raw=msg, stage=Stage.DATA)).outcomes == {"dkim.permerror"}
    assert (await run(dkim.CHECK, silent_resolver, raw=signed(), stage=Stage.DATA)).outcomes == {"dkim.temperror"}


# ---------------------------------------------------------------------------------------------
# DMARC (spf and dkim run for real first)
# ---------------------------------------------------------------------------------------------

async def full_dmarc(resolver: DNSResolver, raw: bytes, sender: str, ip: str = "192.0.2.1",
                     tx_id: str = "tx1") -> CheckResult:
    spf_r = await run(spf.CHECK, resolver, sender=sender, ip=ip)
    dkim_r = await run(dkim.CHECK, resolver, raw=raw, stage=Stage.DATA)
    return await run(dmarc.CHECK, resolver, raw=raw, sender=sender, ip=ip, stage=Stage.DATA,
                     results={"spf": spf_r, "dkim": dkim_r}, tx_id=tx_id)


@pytest.mark.parametrize(("from_addr", "sender", "ip", "expected"), [
    ("a@pass.auth.test", "b@pass.auth.test", "192.0.2.1", {"dmarc.pass"}),  # SPF aligned (relaxed)
    ("a@auth.test", "b@fail.auth.test", "192.0.2.1", {"dmarc.fail", "dmarc.fail_reject"}),
    ("a@sub.auth.test", "b@fail.auth.test", "192.0.2.1", {"dmarc.fail", "dmarc.fail_quarantine"}),  # sp
    ("a@nonepol.auth.test", "b@fail.auth.test", "192.0.2.1", {"dmarc.fail", "dmarc.fail_none"}),
    ("a@quar.auth.test", "b@fail.auth.test", "192.0.2.1", {"dmarc.fail", "dmarc.fail_quarantine"}),
    ("a@pct0.auth.test", "b@fail.auth.test", "192.0.2.1", {"dmarc.fail", "dmarc.fail_quarantine"}),  # pct=0
    ("a@strict.auth.test", "b@pass.auth.test", "192.0.2.1", {"dmarc.fail", "dmarc.fail_reject"}),  # aspf=s
])
async def test_dmarc_policies(resolver: DNSResolver, from_addr: str, sender: str, ip: str,
                              expected: set[str]) -> None:
    raw = make_message(from_addr=from_addr)
    result = await full_dmarc(resolver, raw, sender, ip)
    assert result.outcomes == expected, result.details


async def test_dmarc_passes_on_aligned_dkim_despite_spf_fail(resolver: DNSResolver) -> None:
    result = await full_dmarc(resolver, signed(from_addr="a@auth.test"), "b@fail.auth.test")
    assert result.outcomes == {"dmarc.pass"}
    assert result.details["dkim_aligned"] == "yes"


async def test_dmarc_dns_timeout_is_temperror(silent_resolver: DNSResolver) -> None:
    result = await full_dmarc(silent_resolver, make_message(from_addr="a@auth.test"), "b@auth.test")
    assert result.outcomes == {"dmarc.temperror"}


# ---------------------------------------------------------------------------------------------
# ARC
# ---------------------------------------------------------------------------------------------

async def test_arc_chain(resolver: DNSResolver) -> None:
    raw = arc_seal(make_message(), "lists.auth.test", "arc", rsa_key(1024, 8)[0])
    opts = arc.Options(trusted_sealers=["lists.auth.test"])
    result = await run(arc.CHECK, resolver, opts, raw=raw, stage=Stage.DATA)
    assert result.outcomes == {"arc.pass", "arc.trusted_pass"}
    result = await run(arc.CHECK, resolver, opts, raw=raw.replace(b"Hello.", b"Hellp."), stage=Stage.DATA)
    assert result.outcomes == {"arc.fail"}


# ---------------------------------------------------------------------------------------------
# iprev
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("ip", "outcome", "name"), [
    ("192.0.2.1", "pass", "mail.auth.test"), ("192.0.2.2", "fail", None), ("192.0.2.3", "none", None),
])
async def test_iprev(resolver: DNSResolver, ip: str, outcome: str, name: str | None) -> None:
    result = await run(iprev.CHECK, resolver, ip=ip, stage=Stage.CONNECT)
    assert result.outcomes == {f"iprev.{outcome}"}
    assert result.details.get("name") == name


async def test_iprev_temperror(silent_resolver: DNSResolver) -> None:
    result = await run(iprev.CHECK, silent_resolver, ip="192.0.2.1", stage=Stage.CONNECT)
    assert result.outcomes == {"iprev.temperror"}


# ---------------------------------------------------------------------------------------------
# Authentication-Results from real results
# ---------------------------------------------------------------------------------------------

async def test_authentication_results_header(resolver: DNSResolver) -> None:
    raw = signed(from_addr="a@auth.test")
    sender = "bounce@pass.auth.test"
    results = {"iprev": await run(iprev.CHECK, resolver, ip="192.0.2.1", stage=Stage.CONNECT),
               "spf": await run(spf.CHECK, resolver, sender=sender)}
    results["dkim"] = await run(dkim.CHECK, resolver, raw=raw, stage=Stage.DATA)
    results["dmarc"] = await run(dmarc.CHECK, resolver, raw=raw, stage=Stage.DATA, results=results)
    ctx = make_ctx(resolver, sender=sender, raw=raw)
    value = build_authentication_results(ID, results, ctx.session, ctx.session.transaction)  # type: ignore[arg-type]
    parsed = authres.AuthenticationResultsHeader.parse_value(value)
    assert parsed.authserv_id == ID
    assert [(r.method, r.result) for r in parsed.results] == [
        ("iprev", "pass"), ("spf", "pass"), ("dkim", "pass"), ("dkim", "pass"), ("dmarc", "pass")]
    assert "smtp.mailfrom=bounce@pass.auth.test" in value
    assert "policy.iprev=192.0.2.1" in value
