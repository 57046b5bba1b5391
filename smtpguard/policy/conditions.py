"""The condition tree of a rule and its matchers, evaluated in three-valued logic.

`test(facts)` returns True, False or None ("unknown: a check this needs has not run yet").
Invariants:
- `all`/`any`/`not` follow Kleene logic, so a known False in an `all` (or a known True in an
  `any`) decides without running the checks of the other branches;
- only `Outcome` can be unknown; every fact matcher is decided from `Facts` alone;
- nothing here does I/O: list files were read into sets by the loader;
- string comparisons (equality, glob, list membership) are case-insensitive; regexes are
  compiled case-insensitive and use `search` (anchor them with ^...$ for a whole match).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable
from dataclasses import dataclass

from smtpguard.checks.base import CheckResult
from smtpguard.facts import Session, Transaction
from smtpguard.lists import AddressSet, CidrSet, DomainSet
from smtpguard.stage import Stage

Tri = bool | None


@dataclass(slots=True)
class Facts:
    """What conditions read during one evaluation. `score` grows as score rules match."""

    stage: Stage
    session: Session
    transaction: Transaction | None
    result: Callable[[str], CheckResult | None]  # check name -> its result, None = not run yet
    score: float = 0.0

    def outcomes(self, check: str) -> frozenset[str] | None:
        got = self.result(check)
        return None if got is None else got.outcomes


# ---------------------------------------------------------------- string matchers


@dataclass(frozen=True, slots=True)
class Equals:
    values: frozenset[str]  # lowercased

    def matches(self, value: str | None) -> bool:
        return value is not None and value.lower() in self.values


@dataclass(frozen=True, slots=True)
class Glob:
    patterns: tuple[str, ...]  # lowercased

    def matches(self, value: str | None) -> bool:
        if value is None:
            return False
        low = value.lower()
        return any(fnmatch.fnmatchcase(low, p) for p in self.patterns)


@dataclass(frozen=True, slots=True)
class Regex:
    patterns: tuple[re.Pattern[str], ...]

    def matches(self, value: str | None) -> bool:
        return value is not None and any(p.search(value) for p in self.patterns)


@dataclass(frozen=True, slots=True)
class InList:
    members: DomainSet | AddressSet | frozenset[str]
    source: str  # the list file, for explain output

    def matches(self, value: str | None) -> bool:
        if value is None:
            return False
        if isinstance(self.members, frozenset):
            return value.lower() in self.members
        return value in self.members


@dataclass(frozen=True, slots=True)
class Present:
    expected: bool

    def matches(self, value: str | None) -> bool:
        return (value is not None and value != "") is self.expected


@dataclass(frozen=True, slots=True)
class AnyOf:
    matchers: tuple[StringMatcher, ...]

    def matches(self, value: str | None) -> bool:
        return any(m.matches(value) for m in self.matchers)


StringMatcher = Equals | Glob | Regex | InList | Present | AnyOf


# ---------------------------------------------------------------- fact accessors


def _txn(f: Facts) -> Transaction | None:
    return f.transaction


def _size(f: Facts) -> float | None:
    t = f.transaction
    if t is None:
        return None
    if t.message is not None:
        return float(t.message.size)
    return float(t.declared_size) if t.declared_size is not None else None


STRING_FACTS: dict[str, tuple[Stage, str, Callable[[Facts], str | None]]] = {
    # name: (earliest stage, list kind, getter); list kind picks the set type for list files
    "client_name": (Stage.CONNECT, "domain", lambda f: f.session.client_name),
    "helo": (Stage.HELO, "domain", lambda f: f.session.helo),
    "listener": (Stage.CONNECT, "plain", lambda f: f.session.listener),
    "command": (Stage.COMMAND, "plain", lambda f: f.session.command),
    "sender": (Stage.MAIL, "address", lambda f: t.sender if (t := _txn(f)) else None),
    "sender_domain": (Stage.MAIL, "domain", lambda f: t.sender_domain if (t := _txn(f)) else None),
    "recipient": (Stage.RCPT, "address", lambda f: t.recipient if (t := _txn(f)) else None),
    "recipient_domain": (Stage.RCPT, "domain", lambda f: t.recipient_domain if (t := _txn(f)) else None),
}

BOOL_FACTS: dict[str, tuple[Stage, Callable[[Facts], bool]]] = {
    "tls": (Stage.CONNECT, lambda f: f.session.tls is not None),
    "esmtp": (Stage.HELO, lambda f: f.session.esmtp),
    "proxied": (Stage.CONNECT, lambda f: f.session.proxied),
    "null_sender": (Stage.MAIL, lambda f: (t := _txn(f)) is not None and t.sender == ""),
}

NUMBER_FACTS: dict[str, tuple[Stage, Callable[[Facts], float | None]]] = {
    "size": (Stage.MAIL, _size),  # declared SIZE= at mail/rcpt, real size at data
    "score": (Stage.CONNECT, lambda f: f.score),
    "recipients": (Stage.RCPT, lambda f: float(len(t.recipients)) if (t := _txn(f)) else None),
}

COMPARATORS: dict[str, Callable[[float, float], bool]] = {
    "gt": lambda a, b: a > b,
    "ge": lambda a, b: a >= b,
    "lt": lambda a, b: a < b,
    "le": lambda a, b: a <= b,
    "eq": lambda a, b: a == b,
}


# ---------------------------------------------------------------- condition nodes


@dataclass(frozen=True, slots=True)
class Outcome:
    """True when any of `names` was emitted by its check; unknown while a check has not run."""

    names: frozenset[str]
    checks: tuple[str, ...]  # the checks owning these outcomes, sorted

    def test(self, facts: Facts) -> Tri:
        unknown = False
        for check in self.checks:
            got = facts.outcomes(check)
            if got is None:
                unknown = True
            elif not got.isdisjoint(self.names):
                return True
        return None if unknown else False

    def pending(self, facts: Facts) -> set[str]:
        return {c for c in self.checks if facts.outcomes(c) is None}


@dataclass(frozen=True, slots=True)
class MatchString:
    fact: str
    matcher: StringMatcher

    def test(self, facts: Facts) -> Tri:
        return self.matcher.matches(STRING_FACTS[self.fact][2](facts))

    def pending(self, facts: Facts) -> set[str]:
        return set()


@dataclass(frozen=True, slots=True)
class MatchIP:
    networks: CidrSet
    source: str

    def test(self, facts: Facts) -> Tri:
        return facts.session.client_ip in self.networks

    def pending(self, facts: Facts) -> set[str]:
        return set()


@dataclass(frozen=True, slots=True)
class MatchBool:
    fact: str
    expected: bool

    def test(self, facts: Facts) -> Tri:
        return BOOL_FACTS[self.fact][1](facts) is self.expected

    def pending(self, facts: Facts) -> set[str]:
        return set()


@dataclass(frozen=True, slots=True)
class Compare:
    fact: str
    op: str
    value: float

    def test(self, facts: Facts) -> Tri:
        got = NUMBER_FACTS[self.fact][1](facts)
        return got is not None and COMPARATORS[self.op](got, self.value)

    def pending(self, facts: Facts) -> set[str]:
        return set()


@dataclass(frozen=True, slots=True)
class MatchHeader:
    """A header of the message (data stage): present, or some value matching a regex."""

    name: str
    pattern: re.Pattern[str] | None

    def test(self, facts: Facts) -> Tri:
        t = facts.transaction
        if t is None or t.message is None:
            return False
        values = t.message.header_values(self.name)
        if self.pattern is None:
            return bool(values)
        return any(self.pattern.search(v) for v in values)

    def pending(self, facts: Facts) -> set[str]:
        return set()


@dataclass(frozen=True, slots=True)
class All:
    items: tuple[Condition, ...]

    def test(self, facts: Facts) -> Tri:
        unknown = False
        for item in self.items:
            r = item.test(facts)
            if r is False:
                return False
            if r is None:
                unknown = True
        return None if unknown else True

    def pending(self, facts: Facts) -> set[str]:
        return _pending_of(self.items, facts)


@dataclass(frozen=True, slots=True)
class AnyCond:
    items: tuple[Condition, ...]

    def test(self, facts: Facts) -> Tri:
        unknown = False
        for item in self.items:
            r = item.test(facts)
            if r is True:
                return True
            if r is None:
                unknown = True
        return None if unknown else False

    def pending(self, facts: Facts) -> set[str]:
        return _pending_of(self.items, facts)


@dataclass(frozen=True, slots=True)
class Not:
    item: Condition

    def test(self, facts: Facts) -> Tri:
        r = self.item.test(facts)
        return None if r is None else not r

    def pending(self, facts: Facts) -> set[str]:
        return self.item.pending(facts)


Condition = Outcome | MatchString | MatchIP | MatchBool | Compare | MatchHeader | All | AnyCond | Not


def _pending_of(items: tuple[Condition, ...], facts: Facts) -> set[str]:
    """Checks to run to decide: those of the still-unknown items only."""
    out: set[str] = set()
    for item in items:
        if item.test(facts) is None:
            out |= item.pending(facts)
    return out


def checks_of(cond: Condition | None) -> frozenset[str]:
    """Every check whose outcomes `cond` tests (for load-time validation)."""
    if cond is None:
        return frozenset()
    if isinstance(cond, Outcome):
        return frozenset(cond.checks)
    if isinstance(cond, All | AnyCond):
        return frozenset().union(*(checks_of(i) for i in cond.items))
    if isinstance(cond, Not):
        return checks_of(cond.item)
    return frozenset()


def outcomes_of(cond: Condition | None) -> frozenset[str]:
    if cond is None:
        return frozenset()
    if isinstance(cond, Outcome):
        return cond.names
    if isinstance(cond, All | AnyCond):
        return frozenset().union(*(outcomes_of(i) for i in cond.items))
    if isinstance(cond, Not):
        return outcomes_of(cond.item)
    return frozenset()
