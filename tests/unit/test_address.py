from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from smtpguard.protocol.address import EnvelopeError, is_valid_address, parse_mail, parse_rcpt, xtext_encode


@pytest.mark.parametrize("address", ["a@b.c", '"x y"@b.c', "a.b+c@[192.0.2.1]", "a@[IPv6:2001:db8::1]",
                                     "very.common@example.com"])
def test_valid(address: str) -> None:
    assert is_valid_address(address)


@pytest.mark.parametrize("address", ["a", "a@", "@b", "a b@c", "a@-b.c", "a@b..c", "a@[300.1.1.1]", "x" * 65 + "@b.c",
                                     "a@@b"])
def test_invalid(address: str) -> None:
    assert not is_valid_address(address)


def test_null_sender_and_params() -> None:
    assert parse_mail("FROM:<>", smtputf8_offered=False, max_size=10).address == ""
    path = parse_mail("from:<a@b.c> size=10 body=8bitmime", smtputf8_offered=False, max_size=10)
    assert path.params == {"SIZE": "10", "BODY": "8bitmime"}
    with pytest.raises(EnvelopeError, match="555"):
        parse_mail("FROM:<a@b.c> SMTPUTF8", smtputf8_offered=False, max_size=10)
    with pytest.raises(EnvelopeError, match="553"):
        parse_mail("FROM:<é@b.c>", smtputf8_offered=True, max_size=10)
    assert parse_mail("FROM:<é@b.c> SMTPUTF8", smtputf8_offered=True, max_size=10).utf8


def test_rcpt_dsn_params_and_null_refused() -> None:
    assert parse_rcpt("TO:<a@b.c> NOTIFY=NEVER", smtputf8=False).params == {"NOTIFY": "NEVER"}
    for bad in ("TO:<>", "TO:<a@b.c> NOTIFY=NEVER,SUCCESS", "TO:<a@b.c> ORCPT=x", "TO:<a@b.c> X=1", "TO:"):
        with pytest.raises(EnvelopeError):
            parse_rcpt(bad, smtputf8=False)


def test_source_route_is_dropped() -> None:
    assert parse_rcpt("TO:<@relay.test:a@b.c>", smtputf8=False).address == "a@b.c"


def test_xtext() -> None:
    assert xtext_encode("a+b=c d\r\n") == "a+2Bb+3Dc+20d+0D+0A"


@given(st.text(max_size=40))
def test_xtext_is_exactly_rfc3461(value: str) -> None:
    """The fast path for plain values agrees with the byte-by-byte definition."""
    expected = "".join(chr(b) if 33 <= b <= 126 and b not in b"+=" else f"+{b:02X}"
                       for b in value.encode("utf-8", "surrogateescape"))
    assert xtext_encode(value) == expected
