"""`ratelimit_data`: message and byte rate limits, decided at end of DATA.

- `count: messages` charges one token per message;
- `count: bytes` charges the message size (a message larger than `burst` is always exceeded).
Keys may use facts known at DATA except the per-recipient ones (a message has many
recipients; use `ratelimit_rcpt` for those). Engine and invariants: `smtpguard.ratelimits`.
"""

from __future__ import annotations

from typing import ClassVar, Self

from pydantic import model_validator

from smtpguard.checks.base import CheckBase, CheckContext, CheckResult
from smtpguard.ratelimits import LimitSpec, RateLimitOptions, charge_limits, limit_outcomes, validate_limits
from smtpguard.stage import Scope, Stage

COUNTS = ("messages", "bytes")


class DataRateLimitCheck(CheckBase):
    name: ClassVar[str] = "ratelimit_data"
    stage: ClassVar[Stage] = Stage.DATA
    scope: ClassVar[Scope] = Scope.TRANSACTION

    class Options(RateLimitOptions):
        @model_validator(mode="after")
        def _valid(self) -> Self:
            validate_limits("ratelimit_data", Stage.DATA, COUNTS, self.limits)
            return self

    options: Options

    def declared_outcomes(self) -> frozenset[str]:
        return limit_outcomes(self.name, self.options.limits)

    async def run(self, ctx: CheckContext) -> CheckResult:
        size = 0
        if ctx.transaction is not None:
            if ctx.transaction.message is not None:
                size = ctx.transaction.message.size
            elif ctx.transaction.declared_size is not None:
                size = ctx.transaction.declared_size

        def cost(spec: LimitSpec) -> float | None:
            return float(size) if spec.count == "bytes" else 1.0

        return await charge_limits(self.name, self.options, ctx, cost)


CHECK = DataRateLimitCheck
