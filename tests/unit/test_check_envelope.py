"""The `envelope` check: sender/recipient syntax, null sender fan-out, recipient cap."""

from __future__ import annotations

import ipaddress

import pytest

from smtpguard.checks.base import CheckContext, CheckEnv
from smtpguard.checks.envelope import EnvelopeCheck, Options
from smtpguard.facts import Session, Transaction
from smtpguard.stage import Stage


async def outcomes(sender: str, recipient: str | None = None, accepted: int = 0, max_recipients: int = 100) -> set[str]:
    env = CheckEnv(hostname="mx.example.net")
    check = EnvelopeCheck(Options(max_recipients=max_recipients), env)
    session = Session(id="s", listener="mx", client_ip=ipaddress.ip_address("192.0.2.1"), client_port=1)
    t = Transaction(id="T", sender=sender, recipient=recipient,
                    recipients=[f"r{i}@example.net" for i in range(accepted)])
    stage = Stage.RCPT if recipient is not None else Stage.MAIL
    result = await check.run(CheckContext(stage, session, t, env))
    assert result.outcomes <= check.declared_outcomes()
    return {o.removeprefix("envelope.") for o in result.outcomes}


@pytest.mark.parametrize(("sender", "recipient", "accepted", "expected"), [
    ("alice@example.org", None, 0, {"ok"}),
    ("", None, 0, {"ok"}),
    ("alice@", None, 0, {"bad_sender_syntax"}),
    ("a b@example.org", None, 0, {"bad_sender_syntax"}),
    ("alice@example.org", "bob@example.net", 0, {"ok"}),
    ("alice@example.org", "Postmaster", 0, {"ok"}),
    ("alice@example.org", "bob@@example.net", 0, {"bad_recipient_syntax"}),
    ("", "bob@example.net", 0, {"ok"}),
    ("", "bob@example.net", 1, {"null_sender_multi_rcpt"}),
    ("@@", "x", 1, {"bad_sender_syntax", "bad_recipient_syntax"}),
])
async def test_outcomes(sender: str, recipient: str | None, accepted: int, expected: set[str]) -> None:
    assert await outcomes(sender, recipient, accepted) == expected


async def test_too_many_recipients() -> None:
    assert await outcomes("a@example.org", "b@example.net", accepted=2, max_recipients=3) == {"ok"}
    assert await outcomes("a@example.org", "b@example.net", accepted=3, max_recipients=3) == {"too_many_recipients"}


def test_max_recipients_must_be_positive() -> None:
    with pytest.raises(ValueError):
        Options(max_recipients=0)
