"""One evaluation of one stage: the loop between the pure engine and the lazy check runs.

Invariants:
- the engine is asked again after every batch of check runs; results only grow, and a
  check that is asked for always ends with a result (its own, or `<check>.error`), so the
  loop ends after at most one round per check;
- a batch runs concurrently, each check under `options.timeout` (volatile checks, pure and
  instant by contract, run without a timer and are not timed in CHECK_SECONDS), after its `requires`
  (which get a result first and are passed in `CheckContext.results`); a check runs at most
  once per evaluation even when several others require it; a `requires` cycle gives
  `<check>.error` instead of a deadlock;
- results are cached by scope in the runner-owned fields (`session.results`,
  `transaction.results`, `transaction.rcpt_results[recipient]`), except for `volatile` checks;
- `record` holds every check consulted: outcomes, milliseconds, whether it was cached.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from smtpguard import metrics
from smtpguard.checks.base import Check, CheckContext, CheckEnv, CheckResult
from smtpguard.facts import Session, Transaction
from smtpguard.policy.conditions import Facts
from smtpguard.policy.engine import Decision, NeedChecks, Progress, evaluate_stage
from smtpguard.policy.model import Policy
from smtpguard.stage import Scope, Stage

log = logging.getLogger("smtpguard.policy")


_UNSET: Any = object()


@dataclass(frozen=True, slots=True)
class CheckInfo:
    """What the runner needs to know about a check instance, read once per policy version."""

    requires: tuple[str, ...]
    timeout: float
    volatile: bool
    declared: frozenset[str]


def check_info(check: Check) -> CheckInfo:
    return CheckInfo(tuple(getattr(check, "requires", ())), float(getattr(check.options, "timeout", 10.0)),
                     bool(getattr(check, "volatile", False)), check.declared_outcomes())


class Evaluation:
    def __init__(self, policy: Policy, checks: Mapping[str, Check], stage: Stage, session: Session,
                 transaction: Transaction | None, env: CheckEnv,
                 info: Mapping[str, CheckInfo] | None = None) -> None:
        self.policy = policy
        self.checks = checks
        self.stage = stage
        self.session = session
        self.transaction = transaction
        self.env = env
        self.info = info if info is not None else {}
        self.local: dict[str, CheckResult] = {}  # every result this evaluation has (run or seen)
        self.running: dict[str, asyncio.Future[None]] = {}
        self.record: dict[str, dict[str, Any]] = {}
        self.waits: list[dict[str, Any]] = []
        self._stores: dict[str, dict[str, Any] | None] = {}

    # ------------------------------------------------------------ results

    def _store(self, name: str) -> dict[str, Any] | None:
        store = self._stores.get(name, _UNSET)
        if store is _UNSET:
            store = self._stores[name] = self._find_store(name)
        return store  # type: ignore[no-any-return]

    def _find_store(self, name: str) -> dict[str, Any] | None:
        check = self.checks.get(name)
        if check is None or self._info(name, check).volatile:
            return None
        t = self.transaction
        if check.scope is Scope.CONNECTION:
            return self.session.results
        if check.scope is Scope.TRANSACTION:
            return t.results if t is not None else None
        if t is not None and t.recipient is not None:
            store = t.rcpt_results.get(t.recipient)
            if store is None:
                store = t.rcpt_results[t.recipient] = {}
            return store
        return None

    def result(self, name: str) -> CheckResult | None:
        got = self.local.get(name)  # this evaluation's results, and cached ones already seen
        if got is not None:
            return got
        store = self._store(name)
        if store is None:
            return None
        cached = store.get(name)
        if not isinstance(cached, CheckResult):
            return None
        if name not in self.record:
            self.record[name] = {"outcomes": sorted(cached.outcomes), "cached": True}
        self.local[name] = cached  # later lookups in this evaluation: one dict access
        return cached

    def _keep(self, name: str, result: CheckResult) -> None:
        self.local[name] = result
        store = self._store(name)
        if store is not None:
            store[name] = result

    # ------------------------------------------------------------ deciding

    async def decide(self, base_score: float, already_scored: frozenset[str]) -> Decision:
        facts = Facts(self.stage, self.session, self.transaction, self.result, base_score)
        resume: Progress | None = None
        while True:
            out = evaluate_stage(self.policy, facts, already_scored, resume)
            if isinstance(out, NeedChecks):
                resume = out.progress
                self.waits.append({"rule": out.rule, "checks": sorted(out.names)})
                await self.ensure(out.names)
                missing = [n for n in out.names if self.result(n) is None]
                for name in missing:  # cannot happen with a consistent policy; never loop forever
                    self.local[name] = _error_result(name, "not configured")
                continue
            return out

    async def ensure(self, names: frozenset[str]) -> None:
        if len(names) == 1 and not self.running:  # the hot path, without the list and sort
            (name,) = names
            if self.result(name) is None:
                await self._run(name, (name,))
            return
        pending = [n for n in sorted(names) if self.result(n) is None]
        if len(pending) == 1 and not self.running:
            # the common case: nothing else runs in this evaluation, so nobody can share the
            # run -- no future, no task, no gather, no event-loop round trip
            await self._run(pending[0], (pending[0],))
        elif pending:
            await asyncio.gather(*(self._ensure(n, ()) for n in pending))

    async def _ensure(self, name: str, chain: tuple[str, ...]) -> None:
        if self.result(name) is not None:
            return
        if name in chain:
            log.error("checks %s require each other; %s gives %s.error", " -> ".join((*chain, name)), name, name)
            self._keep(name, _error_result(name, "requires cycle"))
            return
        running = self.running.get(name)
        if running is not None:  # another branch of this evaluation is running it: share
            await running
            return
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.running[name] = done
        try:
            await self._run(name, (*chain, name))
        finally:
            done.set_result(None)

    def _info(self, name: str, check: Check) -> CheckInfo:
        info = self.info.get(name)
        return info if info is not None else check_info(check)

    def context(self, results: Mapping[str, CheckResult]) -> CheckContext:
        return CheckContext(self.stage, self.session, self.transaction, self.env, results)

    async def _run(self, name: str, chain: tuple[str, ...]) -> None:
        check = self.checks.get(name)
        if check is None:
            self.local[name] = _error_result(name, "not configured")
            return
        info = self._info(name, check)
        requires = info.requires
        if len(requires) == 1:
            await self._ensure(requires[0], chain)
        elif requires:
            await asyncio.gather(*(self._ensure(r, chain) for r in requires))
        inputs = {r: got for r in requires if (got := self.result(r)) is not None}
        started = time.perf_counter()
        timeout = info.timeout
        error: str | None = None
        volatile = info.volatile
        try:
            if volatile:  # pure and instant by contract: no timer
                result = await check.run(self.context(inputs))
            else:
                async with asyncio.timeout(timeout):  # a timer, not a task
                    result = await check.run(self.context(inputs))
            if not isinstance(result, CheckResult):
                raise TypeError(f"run() returned {type(result).__name__}, not CheckResult")
        except asyncio.CancelledError:
            raise
        except TimeoutError:
            error = f"timeout after {timeout:g}s"
            log.warning("check %s timed out after %gs (session %s)", name, timeout, self.session.id)
            result = _error_result(name, error)
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            log.warning("check %s failed (session %s): %s", name, self.session.id, error, exc_info=True)
            result = _error_result(name, "exception")
        elapsed = time.perf_counter() - started
        declared = info.declared
        if not result.outcomes <= declared:
            log.warning("check %s emitted undeclared outcomes %s", name, sorted(result.outcomes - declared))
        observe_check(name, result.outcomes, None if volatile else elapsed)
        self._keep(name, result)
        entry: dict[str, Any] = {"outcomes": sorted(result.outcomes), "ms": round(elapsed * 1000, 3), "cached": False}
        if error is not None:
            entry["error"] = error
        self.record[name] = entry


_SECONDS: dict[str, Any] = {}
_OUTCOMES: dict[tuple[str, str], Any] = {}


def observe_check(name: str, outcomes: frozenset[str], elapsed: float | None) -> None:
    """CHECK_SECONDS (not for volatile checks: `elapsed` None) and CHECK_OUTCOMES, with the
    labelled children cached (`labels()` costs microseconds)."""
    if elapsed is not None:
        child = _SECONDS.get(name)
        if child is None:
            child = _SECONDS[name] = metrics.child(metrics.CHECK_SECONDS, name)
        child.observe(elapsed)
    for outcome in outcomes:
        counter = _OUTCOMES.get((name, outcome))
        if counter is None:
            counter = _OUTCOMES[(name, outcome)] = metrics.child(metrics.CHECK_OUTCOMES, name, outcome)
        counter.inc()


def _error_result(name: str, why: str) -> CheckResult:
    return CheckResult(frozenset({f"{name}.error"}), {"error": why})
