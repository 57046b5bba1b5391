"""Authentication-Results: building (sanitised, one result per resinfo) and forged-header detection."""

from __future__ import annotations

import ipaddress

import authres
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smtpguard.authresults import build_authentication_results, is_forged, parse_authserv_id, pvalue
from smtpguard.checks.base import CheckResult
from smtpguard.facts import Session, Transaction

ID = "mx.guard.test"


def session(helo: str | None = "mail.example.com", ip: str = "192.0.2.1") -> Session:
    return Session(id="s", listener="mx", client_ip=ipaddress.ip_address(ip), client_port=1, helo=helo)


def results(sender_domain: str = "example.com", dkim_domain: str = "example.com",
            selector: str = "sel") -> dict[str, CheckResult]:
    return {
        "iprev": CheckResult.of("iprev.pass", result="pass", name="mail.example.com"),
        "spf": CheckResult.of("spf.pass", result="pass", domain=sender_domain, identity="mailfrom"),
        "dkim": CheckResult(frozenset({"dkim.pass", "dkim.fail"}), {
            "signatures": "2", "result": "pass",
            "sig0.domain": dkim_domain, "sig0.selector": selector, "sig0.algorithm": "rsa-sha256",
            "sig0.result": "pass",
            "sig1.domain": "other.example", "sig1.selector": "s2", "sig1.algorithm": "ed25519-sha256",
            "sig1.result": "fail"}),
        "arc": CheckResult.of("arc.none", result="none"),
        "dmarc": CheckResult(frozenset({"dmarc.pass"}), {"result": "pass", "from_domain": "example.com"}),
    }


def test_full_header() -> None:
    value = build_authentication_results(ID, results(), session(), Transaction(id="t", sender="alice@example.com"))
    assert value == (
        "mx.guard.test; iprev=pass policy.iprev=192.0.2.1; spf=pass smtp.mailfrom=alice@example.com; "
        "dkim=pass header.d=example.com header.s=sel header.a=rsa-sha256; "
        "dkim=fail header.d=other.example header.s=s2 header.a=ed25519-sha256; arc=none; "
        "dmarc=pass header.from=example.com")
    parsed = authres.AuthenticationResultsHeader.parse_value(value)
    assert parsed.authserv_id == ID
    assert [r.method for r in parsed.results] == ["iprev", "spf", "dkim", "dkim", "arc", "dmarc"]


def test_no_results_is_none() -> None:
    assert build_authentication_results(ID, {}, session(), Transaction(id="t")) == "mx.guard.test; none"


def test_null_sender_reports_helo() -> None:
    spf = {"spf": CheckResult.of("spf.pass", result="pass", domain="mail.example.com", identity="helo")}
    value = build_authentication_results(ID, spf, session(), Transaction(id="t", sender=""))
    assert value == "mx.guard.test; spf=pass smtp.helo=mail.example.com"


def test_invalid_helo_is_omitted() -> None:
    spf = {"spf": CheckResult.of("spf.none", result="none", identity="helo")}
    value = build_authentication_results(ID, spf, session(helo="[192.0.2.1]"), Transaction(id="t", sender=""))
    assert value == "mx.guard.test; spf=none"


@pytest.mark.parametrize(("sender", "shown"), [
    ("alice@Example.COM", "smtp.mailfrom=alice@example.com"),
    ('"x;dkim=pass"@example.com', "smtp.mailfrom=example.com"),
    ("x;dkim=pass@example.com", "smtp.mailfrom=example.com"),
    ("a@exa;mple.com", None),
])
def test_mailfrom_is_validated(sender: str, shown: str | None) -> None:
    spf = {"spf": CheckResult.of("spf.fail", result="fail", identity="mailfrom")}
    value = build_authentication_results(ID, spf, session(), Transaction(id="t", sender=sender))
    assert value.count(";") == 1
    assert (shown in value) if shown else ("smtp.mailfrom" not in value)


def test_iprev_without_ptr_is_permerror() -> None:
    iprev = {"iprev": CheckResult.of("iprev.none", result="none")}
    value = build_authentication_results(ID, iprev, session(), Transaction(id="t"))
    assert value == "mx.guard.test; iprev=permerror policy.iprev=192.0.2.1"


def test_runner_error_becomes_temperror() -> None:
    value = build_authentication_results(ID, {"spf": CheckResult.of("spf.error")}, session(),
                                         Transaction(id="t", sender="a@example.com"))
    assert value.startswith("mx.guard.test; spf=temperror")


def test_pvalue_quotes_and_strips() -> None:
    assert pvalue("example.com") == "example.com"
    assert pvalue('a b"c\\d;e\r\n') == '"a b\\"c\\\\de"'


hostile = st.text(alphabet=st.characters(codec="utf-8"), max_size=80) | st.sampled_from(
    ["x;dkim=pass", "a\r\nX-Injected: 1", 'q"; spf=pass', "\x00", "(comment", "a\\"])


@settings(max_examples=300, deadline=None)
@given(sender_local=hostile, helo=hostile, d=hostile, s=hostile, from_domain=hostile, null=st.booleans())
def test_no_input_injects_a_result(sender_local: str, helo: str, d: str, s: str, from_domain: str,
                                   null: bool) -> None:
    res = results(dkim_domain=d, selector=s)
    res["dmarc"] = CheckResult(frozenset({"dmarc.fail"}), {"result": "fail", "from_domain": from_domain})
    tx = Transaction(id="t", sender="" if null else f"{sender_local}@example.com")
    value = build_authentication_results(ID, res, session(helo=helo), tx)
    assert not any(c in value for c in "\r\n\x00")
    assert value.count(";") == 6  # authserv-id + exactly six resinfos, nothing injected
    parsed = authres.AuthenticationResultsHeader.parse_value(value)
    assert [r.method for r in parsed.results] == ["iprev", "spf", "dkim", "dkim", "arc", "dmarc"]


@pytest.mark.parametrize(("value", "forged"), [
    ("mx.guard.test; spf=pass smtp.mailfrom=a@example.com", True),
    ("MX.Guard.Test; dkim=pass", True),
    ("mx.guard.test.; none", True),
    ("mx.guard.test 1; none", True),
    (" (hello) \t mx.guard.test; none", True),
    ('"mx.guard.test"; none', True),
    ("mx.guard.test", True),
    ("mx.guard.test;;;garbage(((", True),
    ("mx.guard.test\x00junk", True),
    ("mx.guard.test(unclosed comment; spf=pass", True),
    ("other.example; spf=pass", False),
    ("mx.guard.test.evil.example; spf=pass", False),
    ("mx.guard.testing; spf=pass", False),
    ("sub.mx.guard.test; spf=pass", False),
    ("", False),
    ("(((", False),
])
def test_is_forged(value: str, forged: bool) -> None:
    assert is_forged(value, ID) is forged


@given(st.text(max_size=200))
def test_is_forged_never_raises(value: str) -> None:
    is_forged(value, ID)
    parse_authserv_id(value)


@given(st.text(alphabet=st.characters(codec="ascii"), max_size=100))
def test_anything_after_our_id_and_separator_is_forged(rest: str) -> None:
    assert is_forged(f"{ID};{rest}", ID)
