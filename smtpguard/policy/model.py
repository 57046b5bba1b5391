"""The loaded policy as immutable values: rules, thresholds, check configuration.

Invariants (established by the loader, relied on by the engine):
- `Policy.by_stage[stage]` holds that stage's rules in file-name order, then file order;
  rule names are unique across the policy;
- a rule's `reply` is present exactly for replying actions and its code class fits the
  action (reject 5xx, tempfail 4xx, disconnect 421) -- `Reply` validation at load time;
- every outcome a rule tests is declared by a configured check whose stage is not later than
  the rule's stage (so evaluation never waits for facts that cannot exist yet);
- a policy never changes after loading; hot reload builds a new one.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from smtpguard.policy.conditions import Condition
from smtpguard.policy.templates import Template
from smtpguard.stage import Stage


class Action(enum.Enum):
    ACCEPT = "accept"
    REJECT = "reject"
    TEMPFAIL = "tempfail"
    DISCONNECT = "disconnect"
    ADD_HEADER = "add_header"
    SCORE = "score"
    DELAY = "delay"
    CONTINUE = "continue"

    @property
    def terminal(self) -> bool:
        return self in _TERMINAL

    @property
    def replies(self) -> bool:
        return self in _REPLYING


_TERMINAL = frozenset({Action.ACCEPT, Action.REJECT, Action.TEMPFAIL, Action.DISCONNECT})
_REPLYING = frozenset({Action.REJECT, Action.TEMPFAIL, Action.DISCONNECT})


class Mode(enum.Enum):
    ENFORCE = "enforce"
    SHADOW = "shadow"


class AcceptScope(enum.Enum):
    STAGE = "stage"  # stop evaluating this stage only
    TRANSACTION = "transaction"  # skip the rules of every later stage of this transaction
    SESSION = "session"  # skip every later rule of this connection


MAX_DELAY = 60.0  # seconds: the cap on a stage's total tarpit delay


@dataclass(frozen=True, slots=True)
class ReplySpec:
    code: int
    enhanced: str | None
    text: Template


@dataclass(frozen=True, slots=True)
class HeaderSpec:
    name: str
    value: Template


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    stage: Stage
    condition: Condition | None  # None = always
    action: Action
    file: str
    line: int
    mode: Mode = Mode.ENFORCE
    reply: ReplySpec | None = None  # None = the default for (stage, action)
    scope: AcceptScope = AcceptScope.STAGE  # accept only
    points: float = 0.0  # score only
    points_from_check: bool = False  # score: use the matching checks' CheckResult.score
    header: HeaderSpec | None = None  # add_header only
    seconds: float = 0.0  # delay only
    description: str = ""
    checks: frozenset[str] = frozenset()  # checks whose outcomes the condition tests


@dataclass(frozen=True, slots=True)
class Thresholds:
    """Score thresholds of one stage, applied after its rules when no terminal rule matched."""

    stage: Stage
    file: str
    line: int
    reject: float | None = None
    tempfail: float | None = None
    tag: float | None = None
    mode: Mode = Mode.ENFORCE
    reject_reply: ReplySpec | None = None
    tempfail_reply: ReplySpec | None = None
    tag_header: HeaderSpec | None = None


@dataclass(frozen=True, slots=True)
class CheckConfig:
    """A `checks:` entry: validated options for one check, and where they were written."""

    name: str
    options: Mapping[str, Any]
    file: str
    line: int
    base: Path | None = None  # where the options' `@files` resolve (the file's directory)


@dataclass(frozen=True, slots=True)
class Policy:
    rules: tuple[Rule, ...] = ()
    thresholds: Mapping[Stage, Thresholds] = field(default_factory=dict)
    check_configs: Mapping[str, CheckConfig] = field(default_factory=dict)
    files: tuple[str, ...] = ()
    version: str = "empty"
    by_stage: Mapping[Stage, tuple[Rule, ...]] = field(default_factory=dict)

    @staticmethod
    def build(rules: tuple[Rule, ...], thresholds: Mapping[Stage, Thresholds],
              check_configs: Mapping[str, CheckConfig], files: tuple[str, ...], version: str) -> Policy:
        by_stage = {s: tuple(r for r in rules if r.stage is s) for s in Stage}
        return Policy(rules, dict(thresholds), dict(check_configs), files, version, by_stage)

    def rules_at(self, stage: Stage) -> tuple[Rule, ...]:
        return self.by_stage.get(stage, ())
