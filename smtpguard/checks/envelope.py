"""`envelope`: what the MAIL FROM / RCPT TO envelope says, as outcomes.

Outcomes:
- `envelope.bad_sender_syntax`: the sender is not a valid RFC 5321 mailbox (the null sender
  `<>` is valid);
- `envelope.bad_recipient_syntax` (rcpt stage): the recipient being decided is not a valid
  mailbox (`postmaster` without a domain is valid, RFC 5321 §4.5.1);
- `envelope.null_sender_multi_rcpt` (rcpt stage): the null sender with more than one
  recipient (bounces go to one address: RFC 5321 §4.5.5 / §6.1 backscatter signature);
- `envelope.too_many_recipients` (rcpt stage): this recipient would exceed `max_recipients`;
- `envelope.ok`: none of the above.

Invariants: pure (no I/O); recipients are counted as those already accepted plus the one
being decided; the check is `volatile` (recomputed per evaluation, so each RCPT sees its own
recipient and count). The proxy already refuses unparsable addresses with 501, so the syntax
outcomes matter mostly for tests and for proxies configured to be lenient.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from smtpguard.checks.base import CheckBase, CheckContext, CheckOptions, CheckResult
from smtpguard.protocol.address import is_valid_address
from smtpguard.stage import Scope, Stage


class Options(CheckOptions):
    max_recipients: int = Field(default=100, ge=1)


def valid_mailbox(address: str, *, recipient: bool) -> bool:
    if recipient and address.lower() == "postmaster":
        return True
    return is_valid_address(address)


class EnvelopeCheck(CheckBase):
    name: ClassVar[str] = "envelope"
    stage: ClassVar[Stage] = Stage.MAIL
    scope: ClassVar[Scope] = Scope.TRANSACTION
    volatile: ClassVar[bool] = True
    Options: ClassVar[type[CheckOptions]] = Options
    OUTCOMES: ClassVar[tuple[str, ...]] = (
        "bad_sender_syntax", "bad_recipient_syntax", "null_sender_multi_rcpt", "too_many_recipients", "ok")

    async def run(self, ctx: CheckContext) -> CheckResult:
        assert isinstance(self.options, Options)
        t = ctx.transaction
        found: set[str] = set()
        details: dict[str, str] = {}
        if t is not None:
            sender = t.sender
            if sender and not valid_mailbox(sender, recipient=False):
                found.add("bad_sender_syntax")
            if t.recipient is not None:
                count = len(t.recipients) + (0 if t.recipient in t.recipients else 1)
                details["recipients"] = str(count)
                if not valid_mailbox(t.recipient, recipient=True):
                    found.add("bad_recipient_syntax")
                if sender == "" and count > 1:
                    found.add("null_sender_multi_rcpt")
                if count > self.options.max_recipients:
                    found.add("too_many_recipients")
        return CheckResult(frozenset(self.outcome(o) for o in (found or {"ok"})), details)


CHECK = EnvelopeCheck
