from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from smtpguard.errors import ReplyError
from smtpguard.reply import Reply, from_upstream, parse_reply, sanitize_text


def test_code_and_enhanced_code_must_agree() -> None:
    with pytest.raises(ReplyError, match="disagree"):
        Reply(550, "4.7.1", "x")
    with pytest.raises(ReplyError):
        Reply(650, None, "x")
    assert str(Reply(451, "4.7.1", "later")) == "451 4.7.1 later"


def test_multiline_rendering() -> None:
    reply = Reply(250, None, "mx.test", ("PIPELINING", "SIZE 10"))
    assert reply.lines() == ["250-mx.test", "250-PIPELINING", "250 SIZE 10"]


def test_parse_reply() -> None:
    assert parse_reply("550 5.7.1 Go away") == Reply(550, "5.7.1", "Go away")
    assert parse_reply("421 closing") == Reply(421, None, "closing")
    with pytest.raises(ReplyError):
        parse_reply("550 4.7.1 mismatch")


def test_upstream_replies_are_kept_exactly() -> None:
    reply = from_upstream(550, "5.1.1 <nobody@example.test>: Recipient address rejected")
    assert reply == Reply(550, "5.1.1", "<nobody@example.test>: Recipient address rejected")
    multi = from_upstream(250, "mx\nPIPELINING\nSIZE 5")
    assert multi.lines() == ["250-mx", "250-PIPELINING", "250 SIZE 5"]
    assert from_upstream(999, "x").code == 451


@given(st.text())
def test_sanitized_text_never_breaks_a_reply(text: str) -> None:
    reply = Reply(550, "5.7.1", sanitize_text(text))
    rendered = str(reply)
    assert "\r" not in rendered and "\n" not in rendered


@given(st.text())
def test_with_suffix_keeps_invariants(text: str) -> None:
    reply = Reply(250, "2.0.0", sanitize_text(text)).with_suffix("[txn ABC]")
    assert reply.lines()[-1].endswith("[txn ABC]")
