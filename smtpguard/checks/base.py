"""What a check is: a named observer that turns facts into outcomes. Rules decide.

A check is one module that defines one class satisfying `Check`, registered by name in
`smtpguard.checks.registry` (built-ins) or through the `smtpguard.checks` entry-point group
(third parties). Invariants:
- `run` never builds a reply and never raises for an expected failure (DNS timeout, Redis down):
  those are outcomes (`spf.temperror`, `ratelimit.error`). Anything it raises anyway, and a
  timeout, becomes `<name>.error` (done by the runner, not by the check).
- Every outcome a check emits is in `declared_outcomes()` and is spelled `<name>.<what>`.
- A check reads `ctx.session` / `ctx.transaction` and never mutates them.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict

from smtpguard.facts import Session, Transaction
from smtpguard.stage import Scope, Stage


class CheckOptions(BaseModel):
    """Base class of every check's options model: unknown keys are errors, values are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    timeout: float = 10.0  # seconds; the runner turns a timeout into `<check>.error`


@dataclass(frozen=True, slots=True)
class CheckResult:
    outcomes: frozenset[str]
    # free-form detail for logs, decision records, Authentication-Results and reply templates
    # (only keys listed in `template_fields` may reach a reply)
    details: Mapping[str, str] = field(default_factory=dict)
    # points for the `score` action when a rule says `points: check` (e.g. DNSBL code weights)
    score: float = 0.0
    template_fields: Mapping[str, str] = field(default_factory=dict)

    @staticmethod
    def of(*outcomes: str, **details: str) -> CheckResult:
        return CheckResult(frozenset(outcomes), dict(details))


class Clock(Protocol):
    def time(self) -> float: ...  # wall clock, seconds since the epoch
    def monotonic(self) -> float: ...


class SystemClock:
    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()


@dataclass(slots=True)
class CheckEnv:
    """Services a check may use; built once per process and shared by every policy version.

    `dns` is a `smtpguard.dns.Resolver`, `store` a `smtpguard.store.Store` (typed `Any` here to
    keep the import graph acyclic; the modules define the Protocols).
    """

    hostname: str  # our own hostname (authserv-id, HELO "claims to be us")
    local_addresses: frozenset[str] = frozenset()
    dns: Any = None
    store: Any = None
    clock: Clock = field(default_factory=SystemClock)


@dataclass(slots=True)
class CheckContext:
    """What one run of a check sees."""

    stage: Stage
    session: Session
    transaction: Transaction | None
    env: CheckEnv
    # results of the checks named in `requires`, already run
    results: Mapping[str, CheckResult] = field(default_factory=dict)


@runtime_checkable
class Check(Protocol):
    name: ClassVar[str]
    # the earliest stage at which the facts this check needs exist; a rule at an earlier
    # stage that tests one of its outcomes is a load-time error. `stage`, `scope` and
    # `requires` are class attributes that an instance may override from its options
    # (e.g. greylisting evaluated at DATA, dnswl required only when configured; mypy needs
    # `# type: ignore[misc]` on such an assignment).
    stage: ClassVar[Stage]
    scope: ClassVar[Scope]
    Options: ClassVar[type[CheckOptions]]
    # names of checks whose results this one needs (e.g. dmarc requires spf and dkim)
    requires: ClassVar[tuple[str, ...]]

    options: CheckOptions

    def declared_outcomes(self) -> frozenset[str]: ...

    async def run(self, ctx: CheckContext) -> CheckResult: ...


class CheckBase:
    """Convenience base: stores options and env; subclasses set the ClassVars and `run`."""

    name: ClassVar[str]
    stage: ClassVar[Stage]
    scope: ClassVar[Scope] = Scope.CONNECTION
    Options: ClassVar[type[CheckOptions]] = CheckOptions
    requires: ClassVar[tuple[str, ...]] = ()
    OUTCOMES: ClassVar[tuple[str, ...]] = ()  # short names, e.g. ("pass", "fail")

    def __init__(self, options: CheckOptions, env: CheckEnv) -> None:
        self.options = options
        self.env = env

    def declared_outcomes(self) -> frozenset[str]:
        return frozenset(f"{self.name}.{o}" for o in (*self.OUTCOMES, "error"))

    def outcome(self, short: str) -> str:
        return f"{self.name}.{short}"

    async def run(self, ctx: CheckContext) -> CheckResult:  # pragma: no cover - abstract
        raise NotImplementedError

    async def close(self) -> None:
        """Release resources when a policy version is retired (optional)."""


# Optional hooks: `async def start(self) -> None` (called once after a policy version is
# loaded, e.g. to start health probes) and `async def close(self) -> None` (when the version
# is retired and nothing pins it any more).
# Optional hook: checks that keep counters (rate limits, concurrency, greylisting auto-allow)
# may define `async def observe(self, event: str, ctx: CheckContext) -> None`; the proxy calls
# it for the events below. It must not raise (errors are logged and counted by the caller).
EVENTS = (
    "connection_closed",  # session ends (concurrency slots)
    "recipient_refused",  # upstream or policy refused a recipient (failed-recipient rates)
    "message_accepted",  # upstream accepted the message (message/byte rates, greylist passes)
)

CheckFactory = Callable[[CheckOptions, CheckEnv], Check]
Observer = Callable[[str, CheckContext], Awaitable[None]]
