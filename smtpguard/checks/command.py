"""`command`: the verbs that reach the command stage (VRFY, EXPN, HELP, ETRN, unknown).

Outcomes (for the command being decided, `Session.command`):
- `command.vrfy`, `command.expn`, `command.help`, `command.etrn`: that verb;
- `command.unknown`: any other verb (the proxy counts them in `Session.unknown_commands`);
- `command.budget_exceeded`: this is the `unknown_budget`-th unknown verb of the session (or
  later; default 5, like Haraka's max_unrecognized_commands) -- typical of scanners and of
  non-SMTP protocols thrown at port 25.

Invariants: pure; `volatile` (each command is a new question, never cached); the verb is
compared uppercase and never echoed anywhere but the (sanitised) details.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from smtpguard.checks.base import CheckBase, CheckContext, CheckOptions, CheckResult
from smtpguard.reply import sanitize_text
from smtpguard.stage import Scope, Stage

KNOWN = {"VRFY": "vrfy", "EXPN": "expn", "HELP": "help", "ETRN": "etrn"}


class Options(CheckOptions):
    unknown_budget: int = Field(default=5, ge=1)


class CommandCheck(CheckBase):
    name: ClassVar[str] = "command"
    stage: ClassVar[Stage] = Stage.COMMAND
    scope: ClassVar[Scope] = Scope.CONNECTION
    volatile: ClassVar[bool] = True
    Options: ClassVar[type[CheckOptions]] = Options
    OUTCOMES: ClassVar[tuple[str, ...]] = ("vrfy", "expn", "help", "etrn", "unknown", "budget_exceeded")

    async def run(self, ctx: CheckContext) -> CheckResult:
        assert isinstance(self.options, Options)
        verb = (ctx.session.command or "").upper()
        found = {KNOWN.get(verb, "unknown")}
        if ctx.session.unknown_commands >= self.options.unknown_budget:
            found.add("budget_exceeded")
        return CheckResult(frozenset(self.outcome(o) for o in found), {"verb": sanitize_text(verb, 20)})


CHECK = CommandCheck
