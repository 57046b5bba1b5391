"""`ratelimit`: connection-rate limits, decided when a client connects.

Counts `connections` only (one token per connection), keyed on facts known at CONNECT
(client_ip, client_net, listener). Recipient, failed-recipient, message and byte limits are the
`ratelimit_rcpt` and `ratelimit_data` checks: one check has one stage, and a limit's outcomes
must be usable exactly where its count is known. Engine and invariants: `smtpguard.ratelimits`.
"""

from __future__ import annotations

from typing import ClassVar, Self

from pydantic import model_validator

from smtpguard.checks.base import CheckBase, CheckContext, CheckResult
from smtpguard.ratelimits import LimitSpec, RateLimitOptions, charge_limits, limit_outcomes, validate_limits
from smtpguard.stage import Scope, Stage


class RateLimitCheck(CheckBase):
    name: ClassVar[str] = "ratelimit"
    stage: ClassVar[Stage] = Stage.CONNECT
    scope: ClassVar[Scope] = Scope.CONNECTION
    COUNTS: ClassVar[tuple[str, ...]] = ("connections",)

    class Options(RateLimitOptions):
        @model_validator(mode="after")
        def _valid(self) -> Self:
            validate_limits("ratelimit", Stage.CONNECT, ("connections",), self.limits)
            return self

    options: Options

    def declared_outcomes(self) -> frozenset[str]:
        return limit_outcomes(self.name, self.options.limits)

    async def run(self, ctx: CheckContext) -> CheckResult:
        return await charge_limits(self.name, self.options, ctx, _cost)


def _cost(spec: LimitSpec) -> float | None:
    return 1.0 if spec.count == "connections" else None


CHECK = RateLimitCheck
