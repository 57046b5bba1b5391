"""The dmarc check: discovery, alignment, p/sp/np, pct sampling, temperror rules (table-driven)."""

from __future__ import annotations

import pytest
from auth_fakes import FakeResolver, make_ctx, make_message

from smtpguard.checks.base import CheckEnv, CheckResult
from smtpguard.checks.dmarc import CHECK, Options, aligned, org_domain, parse_from_domain, parse_record, sample
from smtpguard.stage import Stage

ZONE = [
    ("_dmarc.example.com", "TXT", "v=DMARC1; p=reject; sp=quarantine"),
    ("_dmarc.none.test", "TXT", "v=DMARC1; p=none"),
    ("_dmarc.quar.test", "TXT", "v=DMARC1; p=quarantine"),
    ("_dmarc.strict.test", "TXT", "v=DMARC1; p=reject; adkim=s; aspf=s"),
    ("_dmarc.half.test", "TXT", "v=DMARC1; p=reject; pct=50"),
    ("_dmarc.zero.test", "TXT", "v=DMARC1; p=reject; pct=0"),
    ("_dmarc.np.test", "TXT", "v=DMARC1; p=none; sp=quarantine; np=reject"),
    ("exists.np.test", "A", "192.0.2.1"),
    ("_dmarc.dup.test", "TXT", "v=DMARC1; p=reject"),
    ("_dmarc.dup.test", "TXT", "v=DMARC1; p=none"),
    ("_dmarc.other.test", "TXT", "v=spf1 -all"),
    ("_dmarc.co.uk", "TXT", "v=DMARC1; p=reject"),
    ("_dmarc.example.co.uk", "TXT", "v=DMARC1; p=reject"),
]


def spf(result: str, domain: str) -> CheckResult:
    return CheckResult.of(f"spf.{result}", result=result, domain=domain, identity="mailfrom")


def dkim(*sigs: tuple[str, str]) -> CheckResult:
    details = {"signatures": str(len(sigs))}
    for i, (domain, result) in enumerate(sigs):
        details[f"sig{i}.domain"] = domain
        details[f"sig{i}.result"] = result
    return CheckResult(frozenset(f"dkim.{r}" for _, r in sigs) or frozenset({"dkim.none"}), details)


async def run(from_header: str, spf_result: CheckResult | None = None, dkim_result: CheckResult | None = None,
              resolver: FakeResolver | None = None, tx_id: str = "tx1",
              **opts: object) -> tuple[frozenset[str], dict[str, str]]:
    res = resolver or FakeResolver(ZONE)
    results = {}
    if spf_result is not None:
        results["spf"] = spf_result
    results["dkim"] = dkim_result or dkim()
    raw = make_message(from_addr=from_header)
    check = CHECK(Options(**opts), CheckEnv(hostname="mx.guard.test", dns=res))  # type: ignore[arg-type]
    result = await check.run(make_ctx(res, raw=raw, stage=Stage.DATA, results=results, tx_id=tx_id))
    assert result.outcomes <= check.declared_outcomes()
    return result.outcomes, dict(result.details)


F, P = "dmarc.fail", "dmarc.pass"


@pytest.mark.parametrize(("from_addr", "spf_r", "dkim_r", "expected"), [
    # SPF alignment, relaxed by default
    ("a@example.com", spf("pass", "example.com"), None, {P}),
    ("a@example.com", spf("pass", "bounce.example.com"), None, {P}),
    ("a@example.com", spf("pass", "example.net"), None, {F, "dmarc.fail_reject"}),
    ("a@example.com", spf("fail", "example.com"), None, {F, "dmarc.fail_reject"}),
    # DKIM: any aligned pass is enough, unaligned passes are not
    ("a@example.com", None, dkim(("example.net", "pass"), ("mail.example.com", "pass")), {P}),
    ("a@example.com", None, dkim(("example.net", "pass"), ("example.com", "fail")), {F, "dmarc.fail_reject"}),
    # strict alignment
    ("a@strict.test", spf("pass", "mail.strict.test"), dkim(("mail.strict.test", "pass")),
     {F, "dmarc.fail_reject"}),
    ("a@strict.test", None, dkim(("strict.test", "pass")), {P}),
    # policies
    ("a@none.test", None, None, {F, "dmarc.fail_none"}),
    ("a@quar.test", None, None, {F, "dmarc.fail_quarantine"}),
    ("a@sub.example.com", None, None, {F, "dmarc.fail_quarantine"}),  # sp from the org record
    ("a@exists.np.test", None, None, {F, "dmarc.fail_quarantine"}),  # sp: the subdomain exists
    ("a@ghost.np.test", None, None, {F, "dmarc.fail_reject"}),  # np: it does not
    # no policy
    ("a@nodmarc.test", spf("pass", "nodmarc.test"), None, {"dmarc.none"}),
    ("a@dup.test", None, None, {"dmarc.none"}),
    ("a@other.test", None, None, {"dmarc.none"}),
    ("a@co.uk", None, None, {F, "dmarc.fail_reject"}),
    ("a@www.example.co.uk", None, None, {F, "dmarc.fail_reject"}),
    # a temporary error on an aligned identifier is never a failure
    ("a@example.com", spf("temperror", "example.com"), None, {"dmarc.temperror"}),
    ("a@example.com", None, dkim(("example.com", "temperror")), {"dmarc.temperror"}),
    ("a@example.com", spf("temperror", "example.net"), None, {F, "dmarc.fail_reject"}),
])
async def test_evaluation(from_addr: str, spf_r: CheckResult | None, dkim_r: CheckResult | None,
                          expected: set[str]) -> None:
    outcomes, _ = await run(from_addr, spf_r, dkim_r)
    assert outcomes == expected


async def test_dns_failure_is_temperror() -> None:
    res = FakeResolver(ZONE, timeouts=[("_dmarc.example.com", "TXT")])
    outcomes, _ = await run("a@example.com", resolver=res)
    assert outcomes == {"dmarc.temperror"}
    res = FakeResolver(ZONE, timeouts=[("_dmarc.example.com", "TXT")])
    outcomes, _ = await run("a@sub.example.com", resolver=res)  # fails at the org-domain step
    assert outcomes == {"dmarc.temperror"}


@pytest.mark.parametrize("from_header", ["", "a@example.com, b@example.net", "no address", "a@[192.0.2.1]"])
async def test_unusable_from_is_permerror(from_header: str) -> None:
    outcomes, details = await run(from_header)
    assert outcomes == {"dmarc.permerror"}
    assert details["reason"]


async def test_multiple_from_headers_is_permerror() -> None:
    assert parse_from_domain(["a@example.com", "b@example.com"]) == (None, "multiple From headers")
    assert parse_from_domain(['"Alice" <Alice@Example.COM>']) == ("example.com", "")


def tx_ids(below: bool, pct: int) -> str:
    return next(f"t{i}" for i in range(1000) if (sample(f"t{i}") < pct) == below)


@pytest.mark.parametrize(("domain", "pct", "sampled", "expected"), [
    ("half.test", 50, True, "dmarc.fail_reject"), ("half.test", 50, False, "dmarc.fail_quarantine"),
    ("zero.test", 0, False, "dmarc.fail_quarantine"),
])
async def test_pct_sampling_is_deterministic(domain: str, pct: int, sampled: bool, expected: str) -> None:
    tx = tx_ids(sampled, pct)
    outcomes, details = await run(f"a@{domain}", tx_id=tx)
    assert outcomes == {F, expected}
    assert details["sampled"] == ("yes" if sampled else "no")
    assert (await run(f"a@{domain}", tx_id=tx))[0] == outcomes  # same id, same draw


async def test_pct_can_be_ignored() -> None:
    outcomes, _ = await run("a@zero.test", tx_id=tx_ids(False, 0), honor_pct=False)
    assert outcomes == {F, "dmarc.fail_reject"}


def test_sample_spreads() -> None:
    draws = [sample(f"tx{i}") for i in range(2000)]
    assert min(draws) >= 0 and max(draws) <= 99
    assert 800 < sum(d < 50 for d in draws) < 1200


@pytest.mark.parametrize(("text", "p", "sp", "pct"), [
    (b"v=DMARC1; p=reject", "reject", None, 100),
    (b"v=DMARC1;p=Quarantine;sp=none;pct=20", "quarantine", "none", 20),
    (b"v=DMARC1; p=bogus; rua=mailto:x@example.com", "none", None, 100),
    (b"v=DMARC1; p=reject; pct=abc", "reject", None, 100),
    (b"v=DMARC1; p=reject; pct=500", "reject", None, 100),
])
def test_parse_record(text: bytes, p: str, sp: str | None, pct: int) -> None:
    record = parse_record(text)
    assert record is not None
    assert (record.p, record.sp, record.pct) == (p, sp, pct)


@pytest.mark.parametrize("text", [b"v=spf1 -all", b"p=reject; v=DMARC1", b"v=DMARC1; p=bogus", b"v=DMARC1\xff"])
def test_parse_record_rejects(text: bytes) -> None:
    assert parse_record(text) is None


@pytest.mark.parametrize(("a", "b", "mode", "ok"), [
    ("mail.example.com", "example.com", "r", True), ("mail.example.com", "example.com", "s", False),
    ("a.example.co.uk", "b.example.co.uk", "r", True), ("a.co.uk", "b.co.uk", "r", False),
    ("Example.COM.", "example.com", "s", True), ("foo.github.io", "bar.github.io", "r", False),
])
def test_alignment(a: str, b: str, mode: str, ok: bool) -> None:
    assert aligned(a, b, mode) is ok


def test_org_domain() -> None:
    assert org_domain("a.b.example.co.uk") == "example.co.uk"
    assert org_domain("co.uk") == "co.uk"
