"""`ratelimit_rcpt`: recipient and failed-recipient rate limits, decided per RCPT TO.

- `count: recipients` charges one token per RCPT this check is run for;
- `count: failed_recipients` only *peeks* at RCPT (exceeded while the bucket holds less than one
  token) and is charged by `observe("recipient_refused")`, i.e. when upstream or policy refused
  a recipient -- the usual dictionary-attack limit.
Keys may use every fact known at RCPT (client, helo, sender, recipient, listener).
Engine and invariants: `smtpguard.ratelimits`.
"""

from __future__ import annotations

from typing import ClassVar, Self

from pydantic import model_validator

from smtpguard.checks.base import CheckBase, CheckContext, CheckResult
from smtpguard.ratelimits import (
    LimitSpec,
    RateLimitOptions,
    charge_in_background,
    charge_limits,
    limit_outcomes,
    validate_limits,
)
from smtpguard.stage import Scope, Stage

COUNTS = ("recipients", "failed_recipients")


class RecipientRateLimitCheck(CheckBase):
    name: ClassVar[str] = "ratelimit_rcpt"
    stage: ClassVar[Stage] = Stage.RCPT
    scope: ClassVar[Scope] = Scope.RECIPIENT

    class Options(RateLimitOptions):
        @model_validator(mode="after")
        def _valid(self) -> Self:
            validate_limits("ratelimit_rcpt", Stage.RCPT, COUNTS, self.limits)
            return self

    options: Options

    def declared_outcomes(self) -> frozenset[str]:
        return limit_outcomes(self.name, self.options.limits)

    async def run(self, ctx: CheckContext) -> CheckResult:
        return await charge_limits(self.name, self.options, ctx, _run_cost)

    async def observe(self, event: str, ctx: CheckContext) -> None:
        if event == "recipient_refused" and any(s.count == "failed_recipients" for s in self.options.limits.values()):
            await charge_in_background(self.name, self.options, ctx, _refused_cost)


def _run_cost(spec: LimitSpec) -> float | None:
    return 1.0 if spec.count == "recipients" else 0.0


def _refused_cost(spec: LimitSpec) -> float | None:
    return 1.0 if spec.count == "failed_recipients" else None


CHECK = RecipientRateLimitCheck
