"""Offline evaluation: checks answer with outcomes the user gives instead of asking the world.

Used by `smtpguard explain --offline`, `smtpguard test` fixtures and the benchmark.
Invariants:
- a check for which outcomes were given returns exactly those (and never does I/O);
- a pure check (`PURE_CHECKS`: facts only -- `helo`, `envelope`, `relay`, `protocol`,
  `command`) always runs for real (offline `env.dns` is None, so `helo` skips its forward
  lookup); given outcomes of a pure check are added to its own (`helo.no_forward_dns`);
- any other check with no given outcomes returns no outcome at all ("nothing found"), so a
  rule testing it does not match; the decision record says `offline: no outcome given`;
- given names are validated: an unknown check or outcome is reported, never silently ignored.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

from smtpguard.checks.base import Check, CheckContext, CheckResult
from smtpguard.policy.loader import LoadedPolicy

PURE_CHECKS = frozenset({"helo", "envelope", "relay", "protocol", "command"})


class OfflineCheck:
    """Stands in for a real check: returns the given outcomes, plus -- for a pure check -- what
    the real check finds (then `<check>.ok` / `.clean` is dropped when anything else holds)."""

    def __init__(self, inner: Check, given: frozenset[str], run_inner: bool) -> None:
        self.inner = inner
        self.name = inner.name
        self.stage = inner.stage
        self.scope = inner.scope
        self.Options = inner.Options
        self.options = inner.options
        self.requires: tuple[str, ...] = tuple(getattr(inner, "requires", ())) if run_inner else ()
        self.volatile = bool(getattr(inner, "volatile", False))
        self.given = given
        self.run_inner = run_inner

    def declared_outcomes(self) -> frozenset[str]:
        return self.inner.declared_outcomes()

    async def run(self, ctx: CheckContext) -> CheckResult:
        if not self.run_inner:
            return CheckResult(self.given, {"offline": "given" if self.given else "no outcome given"})
        real = await self.inner.run(ctx)
        outcomes = real.outcomes | self.given
        if len(outcomes) > 1:
            outcomes -= {f"{self.name}.ok", f"{self.name}.clean"}
        return CheckResult(outcomes, real.details, real.score, real.template_fields)


def is_pure(check: Check) -> bool:
    """Runs offline without network: DNS-dependent parts are skipped when `env.dns` is None."""
    return check.name in PURE_CHECKS


def given_by_check(outcomes: Iterable[str]) -> dict[str, frozenset[str]]:
    out: dict[str, set[str]] = {}
    for name in outcomes:
        out.setdefault(name.partition(".")[0], set()).add(name)
    return {k: frozenset(v) for k, v in out.items()}


def outcome_problems(outcomes: Iterable[str], checks: Mapping[str, Check]) -> list[str]:
    """Why some given outcomes cannot be used (unknown check or outcome); empty when fine."""
    problems = []
    for name in sorted(set(outcomes)):
        check_name, dot, what = name.partition(".")
        check = checks.get(check_name)
        if not dot or not what:
            problems.append(f"outcome {name!r} must be spelled <check>.<outcome>")
        elif check is None:
            problems.append(f"outcome {name!r}: the policy does not use a check called {check_name!r}")
        elif name not in check.declared_outcomes():
            problems.append(f"unknown outcome {name!r} (check {check_name} declares: "
                            f"{', '.join(sorted(check.declared_outcomes()))})")
    return problems


def offline_checks(checks: Mapping[str, Check], outcomes: Iterable[str]) -> dict[str, Any]:
    given = given_by_check(outcomes)
    out: dict[str, Any] = {}
    for name, check in checks.items():
        if is_pure(check):
            out[name] = OfflineCheck(check, given[name], run_inner=True) if name in given else check
        else:
            out[name] = OfflineCheck(check, given.get(name, frozenset()), run_inner=False)
    return out


def offline_policy(loaded: LoadedPolicy, outcomes: Iterable[str]) -> LoadedPolicy:
    return replace(loaded, checks=offline_checks(loaded.checks, outcomes))
