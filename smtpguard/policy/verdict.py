"""What the policy engine tells the proxy after evaluating one stage.

Contract between the proxy (smtpguard/protocol) and the policy runner (smtpguard/policy):
- `reply is None` means "no objection": the proxy goes on (forwards the command upstream,
  or answers with its own default at stages it answers itself).
- `reply` set means "answer the client with exactly this" (already validated, templates
  expanded and escaped, transaction id appended by the proxy); `disconnect` closes the
  session after writing it (421).
- `delay` seconds are waited (tarpit) before the reply or before forwarding.
- `headers` are added to the message sent upstream (collected over the transaction's stages;
  the proxy inserts them at the data stage, built not concatenated).
- `accepted` is True when an `accept` rule ended evaluation (an allow-list hit).
- `record` is the JSON-able trace for the decision record and `explain`; empty when the stage
  had nothing to decide (no rules, no thresholds): such stages are left out of the records.
- `policy` is the version (content hash) the stage was evaluated with.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from smtpguard.facts import Session, Transaction
from smtpguard.reply import Reply
from smtpguard.stage import Stage


@dataclass(frozen=True, slots=True)
class RuleHit:
    rule: str
    action: str
    mode: str  # "enforce" | "shadow"
    file: str
    line: int
    reply: str | None = None  # what it replied / would have replied (shadow)


@dataclass(frozen=True, slots=True)
class Verdict:
    reply: Reply | None = None
    disconnect: bool = False
    delay: float = 0.0
    headers: tuple[tuple[str, str], ...] = ()
    accepted: bool = False
    hits: tuple[RuleHit, ...] = ()
    score: float = 0.0
    record: dict[str, Any] = field(default_factory=dict)
    policy: str | None = None

    @property
    def refuses(self) -> bool:
        return self.reply is not None and self.reply.code >= 400


PROCEED = Verdict()


class PolicyGate(Protocol):
    """What the proxy calls. Implemented by `smtpguard.policy.runner.PolicyRunner`."""

    async def evaluate(self, stage: Stage, session: Session, transaction: Transaction | None) -> Verdict:
        """Run the checks the stage's rules need (lazily, cached in session/transaction
        `results`) and the rules; never raises (an internal error is logged and gives a
        `451 4.3.0` verdict at stages that can reply)."""
        ...

    async def observe(self, event: str, session: Session, transaction: Transaction | None) -> None:
        """Forward a bookkeeping event (checks.base.EVENTS) to checks that observe it."""
        ...

    async def run_checks(self, names: Sequence[str], stage: Stage, session: Session,
                         transaction: Transaction | None) -> Mapping[str, Any]:
        """Make sure these checks ran (e.g. for Authentication-Results) and return their
        results (`CheckResult` by check name; missing names = not configured)."""
        ...


_NO_POLICY_VERDICT = Verdict(policy="none")


class NoPolicy:
    """A PolicyGate with no rules at all: every stage proceeds (benchmarks, tests)."""

    version = "none"
    rule_count = 0

    async def evaluate(self, stage: Stage, session: Session, transaction: Transaction | None) -> Verdict:
        return _NO_POLICY_VERDICT

    async def observe(self, event: str, session: Session, transaction: Transaction | None) -> None:
        return None

    async def run_checks(self, names: Sequence[str], stage: Stage, session: Session,
                         transaction: Transaction | None) -> Mapping[str, Any]:
        return {}
