"""`protocol`: SMTP protocol misbehaviour the proxy observed in this session, as outcomes.

The proxy sets the facts (`Session.early_talker`, `.pipelining_violation`,
`.unknown_commands`, `.helo`); this check names them so rules can refuse, score or only
count them. Outcomes (several can hold):
- `protocol.early_talker`: the client sent data before our greeting (spambots do; RFC 5321
  §4.3.1 clients must wait);
- `protocol.pipelining`: unauthorised pipelining -- commands sent ahead of replies when
  PIPELINING was not offered (HELO, or before EHLO), or a command that must be synchronous
  (EHLO, DATA, ...) followed by more input, or message content sent before our 354;
- `protocol.unknown_command`: at least one unknown verb so far in the session;
- `protocol.no_helo`: a transaction started without HELO/EHLO (mail stage and later);
- `protocol.clean`: none of the above.

Invariants: pure; stage connect (early talking is known before the greeting) but usable at
any later stage; `volatile`, because the facts grow during the session -- it is recomputed at
every evaluation that needs it (it costs a few attribute reads).
"""

from __future__ import annotations

from typing import ClassVar

from smtpguard.checks.base import CheckBase, CheckContext, CheckResult
from smtpguard.stage import Scope, Stage


class ProtocolCheck(CheckBase):
    name: ClassVar[str] = "protocol"
    stage: ClassVar[Stage] = Stage.CONNECT
    scope: ClassVar[Scope] = Scope.CONNECTION
    volatile: ClassVar[bool] = True
    OUTCOMES: ClassVar[tuple[str, ...]] = ("early_talker", "pipelining", "unknown_command", "no_helo", "clean")

    async def run(self, ctx: CheckContext) -> CheckResult:
        s = ctx.session
        found = set()
        if s.early_talker:
            found.add("early_talker")
        if s.pipelining_violation:
            found.add("pipelining")
        if s.unknown_commands > 0:
            found.add("unknown_command")
        if ctx.stage in (Stage.MAIL, Stage.RCPT, Stage.DATA) and not s.helo:
            found.add("no_helo")
        return CheckResult(frozenset(self.outcome(o) for o in (found or {"clean"})),
                           {"unknown_commands": str(s.unknown_commands)})


CHECK = ProtocolCheck
