"""`PolicyRunner`: the proxy's `PolicyGate` -- versions, lazy checks, verdicts, hot reload.

Invariants (tests/unit/test_policy_runner.py, test_policy_reload.py):
- `evaluate` never raises: an internal error is logged and gives `451 4.3.0` at stages that can
  reply (nothing at disconnect);
- checks run lazily, only when a rule being evaluated needs one of their outcomes; each runs
  at most once per connection / transaction / recipient (its `scope`) and the result is kept
  in `session.results`, `transaction.results` or `transaction.rcpt_results[recipient]`.
  A check class may set `volatile = True` (cheap, pure, facts change during the session,
  e.g. `command`, `protocol`): its result is then computed per evaluation and never cached;
- a check that raises or exceeds `options.timeout` yields `<check>.error` (logged, counted);
- a transaction pins the policy version current at its first evaluation (MAIL) in
  `Transaction.policy`; a connection pins the version current at connect for the
  connect/helo/command/disconnect stages. A reload never changes a pinned version, and a
  retired version's checks are closed once nothing pins it;
- `reload` keeps the old version on any error, logs every problem as `file:line: message`
  and counts `POLICY_RELOADS{result}`; file reads happen in a worker thread;
- `Verdict.headers` are the headers added at this stage; `transaction.headers` accumulates
  them over the transaction (what the proxy inserts at the data stage); score points of
  connection stages go to `session.score`, of transaction stages to `transaction.score`;
  a score rule counts at most once per connection (connection stages) or per transaction;
- per-session state (the connect-time pin) is released by `evaluate(DISCONNECT)` or
  `observe("connection_closed")`, whichever comes first: the proxy must call one of them;
- reload builds the new version in a worker thread: check constructors (and option
  validators) must not touch the event loop; async setup belongs in `start()`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from smtpguard import metrics
from smtpguard.checks.base import Check, CheckEnv
from smtpguard.checks.registry import CheckRegistry
from smtpguard.errors import ConfigError
from smtpguard.facts import Session, Transaction
from smtpguard.policy.builtin import builtin_source
from smtpguard.policy.defaults import INTERNAL_ERROR, REPLYING_STAGES
from smtpguard.policy.evaluation import CheckInfo, Evaluation, check_info
from smtpguard.policy.loader import LoadedPolicy, Source, load_policy
from smtpguard.policy.model import AcceptScope, Action, Mode
from smtpguard.policy.verdict import RuleHit, Verdict
from smtpguard.stage import TRANSACTION_STAGES, Stage

log = logging.getLogger("smtpguard.policy")

EVENT_STAGES = {"connection_closed": Stage.DISCONNECT, "recipient_refused": Stage.RCPT,
                "message_accepted": Stage.DATA}


@dataclass(eq=False, slots=True)
class PolicyVersion:
    """One loaded policy with its check instances; `pins` counts sessions/transactions on it."""

    loaded: LoadedPolicy
    pins: int = 0
    retired: bool = False
    closed: bool = False
    info: dict[str, CheckInfo] = field(default_factory=dict)
    observers: tuple[str, ...] = ()  # checks with an `observe` hook, in name order

    def __post_init__(self) -> None:
        self.info = {name: check_info(check) for name, check in self.loaded.checks.items()}
        self.observers = tuple(sorted(n for n, c in self.loaded.checks.items() if hasattr(c, "observe")))

    @property
    def version(self) -> str:
        return self.loaded.policy.version

    @property
    def checks(self) -> Mapping[str, Check]:
        return self.loaded.checks


@dataclass(eq=False, slots=True)
class TransactionPin:
    """What the runner keeps in `Transaction.policy`."""

    version: PolicyVersion
    scored: set[str] = field(default_factory=set)


@dataclass(eq=False, slots=True)
class _SessionState:
    version: PolicyVersion
    scored: set[str] = field(default_factory=set)
    txn: TransactionPin | None = None


class PolicyRunner:
    def __init__(self, policy_dir: Path | None, env: CheckEnv, *, registry: CheckRegistry | None = None,
                 builtin_policy: str | None = None, debounce_ms: int = 500) -> None:
        self.policy_dir = policy_dir
        self.env = env
        self.registry = registry if registry is not None else CheckRegistry.discover()
        self.builtin_policy = builtin_policy
        self.debounce_ms = debounce_ms
        self._current: PolicyVersion | None = None
        self._sessions: dict[str, _SessionState] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._versions: list[PolicyVersion] = []
        self._reload_lock = asyncio.Lock()
        # injectable for tests: an async iterator factory like watchfiles.awatch
        self.awatch: Callable[..., Any] | None = None

    @classmethod
    def from_loaded(cls, loaded: LoadedPolicy, env: CheckEnv) -> PolicyRunner:
        """A runner over an already loaded policy (explain, fixtures, benchmarks); no reload."""
        runner = cls(None, env, registry=CheckRegistry())
        runner._activate(PolicyVersion(loaded))
        return runner

    # ------------------------------------------------------------ loading

    @property
    def version(self) -> str:
        return self._current.version if self._current else "none"

    @property
    def rule_count(self) -> int:
        return len(self._current.loaded.policy.rules) if self._current else 0

    @property
    def loaded(self) -> LoadedPolicy:
        if self._current is None:
            raise RuntimeError("PolicyRunner.load() was not called")
        return self._current.loaded

    def _build(self) -> LoadedPolicy:
        extra: list[Source] = []
        if self.policy_dir is None and self.builtin_policy:
            extra.append(builtin_source(self.builtin_policy))
        return load_policy(self.policy_dir, self.env, self.registry, extra)

    def load(self) -> LoadedPolicy:
        """Load the policy now (blocking; at startup). Raises `ConfigError`."""
        try:
            loaded = self._build()
        except ConfigError:
            metrics.child(metrics.POLICY_RELOADS, "error").inc()
            raise
        self._activate(PolicyVersion(loaded))
        for w in loaded.warnings:
            log.warning("%s", w.render())
        return loaded

    async def reload(self) -> bool:
        """Re-read the policy; on any problem keep the current version and return False."""
        async with self._reload_lock:
            try:
                loaded = await asyncio.to_thread(self._build)
            except ConfigError as exc:
                for p in exc.problems:
                    (log.warning if p.severity == "warning" else log.error)("policy reload: %s", p.render())
                log.error("policy reload failed: keeping version %s", self.version)
                metrics.child(metrics.POLICY_RELOADS, "error").inc()
                return False
            except Exception:
                log.exception("policy reload failed: keeping version %s", self.version)
                metrics.child(metrics.POLICY_RELOADS, "error").inc()
                return False
            new = PolicyVersion(loaded)
            if self._current is not None and new.version == self._current.version:
                await _close_checks(new)
                log.info("policy unchanged (version %s)", new.version)
                return True
            try:
                await _start_checks(new)
            except Exception:
                log.exception("policy reload failed: a check did not start; keeping version %s", self.version)
                await _close_checks(new)
                metrics.child(metrics.POLICY_RELOADS, "error").inc()
                return False
            for w in loaded.warnings:
                log.warning("%s", w.render())
            self._activate(new)
            return True

    def _activate(self, new: PolicyVersion) -> None:
        old = self._current
        self._current = new
        self._versions.append(new)
        metrics.child(metrics.POLICY_RELOADS, "ok").inc()
        metrics.POLICY_RULES.set(len(new.loaded.policy.rules))
        metrics.POLICY_INFO.info({"version": new.version})
        metrics.POLICY_LAST_RELOAD.set(self.env.clock.time())
        log.info("policy version %s active: %d rules from %d files", new.version, len(new.loaded.policy.rules),
                 len(new.loaded.policy.files))
        if old is not None:
            old.retired = True
            self._maybe_close(old)

    async def start(self) -> None:
        """Start the checks of the loaded version (loads first if needed)."""
        if self._current is None:
            self.load()
        assert self._current is not None
        await _start_checks(self._current)

    async def close(self) -> None:
        for task in list(self._tasks):
            await task
        for v in self._versions:
            if not v.closed:
                await _close_checks(v)
        self._versions.clear()

    async def watch(self, stop: asyncio.Event) -> None:
        """Reload whenever the policy directory (or a list file) changes, until `stop` is set."""
        if self.policy_dir is None:
            await stop.wait()
            return
        awatch = self.awatch
        if awatch is None:
            import watchfiles

            awatch = watchfiles.awatch
        paths = {self.policy_dir, *(p.parent for p in self.loaded.list_files)} if self._current else {self.policy_dir}
        async for changes in awatch(*sorted(paths), stop_event=stop, debounce=self.debounce_ms):
            log.info("policy files changed (%d); reloading", len(changes))
            await self.reload()

    def _maybe_close(self, v: PolicyVersion) -> None:
        if v.retired and v.pins <= 0 and not v.closed:
            v.closed = True
            if v in self._versions:
                self._versions.remove(v)
            try:
                task = asyncio.get_running_loop().create_task(_close_checks(v))
            except RuntimeError:  # no loop (sync load at startup): nothing was started
                return
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------ pins

    def _session_state(self, session: Session) -> _SessionState:
        state = self._sessions.get(session.id)
        if state is None:
            if self._current is None:
                self.load()
            assert self._current is not None
            state = _SessionState(self._current)
            self._current.pins += 1
            self._sessions[session.id] = state
        return state

    def _pin(self, stage: Stage, session: Session, txn: Transaction | None) -> tuple[PolicyVersion, set[str]]:
        if stage is Stage.DISCONNECT and session.id not in self._sessions:
            # the session was already released (observe("connection_closed") came first)
            if self._current is None:
                self.load()
            assert self._current is not None
            return self._current, set()
        state = self._session_state(session)
        if stage not in TRANSACTION_STAGES or txn is None:
            return state.version, state.scored
        pin = txn.policy
        if not isinstance(pin, TransactionPin):
            assert self._current is not None
            pin = TransactionPin(self._current)
            self._current.pins += 1
            txn.policy = pin
            if state.txn is not None:
                self._unpin(state.txn.version)
            state.txn = pin
        return pin.version, pin.scored

    def _unpin(self, v: PolicyVersion) -> None:
        v.pins -= 1
        self._maybe_close(v)

    def _release(self, session: Session) -> None:
        state = self._sessions.pop(session.id, None)
        if state is None:
            return
        if state.txn is not None:
            self._unpin(state.txn.version)
        self._unpin(state.version)

    # ------------------------------------------------------------ PolicyGate

    async def evaluate(self, stage: Stage, session: Session, transaction: Transaction | None) -> Verdict:
        started = time.perf_counter()
        try:
            return await self._evaluate(stage, session, transaction, started)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("policy evaluation failed at %s (session %s)", stage.value, session.id)
            record = {"stage": stage.value, "error": "internal error, see logs"}
            if stage in REPLYING_STAGES:
                return Verdict(reply=INTERNAL_ERROR, record=record)
            return Verdict(record=record)
        finally:  # POLICY_EVALUATION_SECONDS is observed by the proxy around this call
            if stage is Stage.DISCONNECT:
                self._release(session)

    async def _evaluate(self, stage: Stage, session: Session, txn: Transaction | None, started: float) -> Verdict:
        version, scored = self._pin(stage, session, txn)
        in_txn = stage in TRANSACTION_STAGES and txn is not None
        if session.accepted_by_rule or (in_txn and txn is not None and txn.accepted_by_rule):
            return Verdict(accepted=True, score=_base_score(stage, session, txn),
                           record={"stage": stage.value, "policy": version.version, "skipped": "accepted earlier"},
                           policy=version.version)
        policy = version.loaded.policy
        if not policy.rules_at(stage) and stage not in policy.thresholds:  # nothing to decide, nothing to record
            return Verdict(score=_base_score(stage, session, txn), policy=version.version)
        ev = Evaluation(policy, version.checks, stage, session, txn, self.env, version.info)
        decision = await ev.decide(_base_score(stage, session, txn), frozenset(scored))
        # apply what the decision changes in the runner-owned fields
        if decision.points:
            if in_txn and txn is not None:
                txn.score += decision.points
            else:
                session.score += decision.points
        scored.update(decision.scored)
        if txn is not None and stage in TRANSACTION_STAGES:
            for header in decision.headers:
                if header not in txn.headers:
                    txn.headers.append(header)
        final = decision.final
        if final is not None and final.action is Action.ACCEPT:
            if final.scope == AcceptScope.TRANSACTION.value and txn is not None:
                txn.accepted_by_rule = True
            elif final.scope == AcceptScope.SESSION.value:
                session.accepted_by_rule = True
        hits = []
        for hit in decision.hits:
            _count_decision(stage.value, hit.name, hit.action.value, hit.mode.value)
            reply_text = str(hit.reply) if hit.reply is not None else None
            hits.append(RuleHit(hit.name, hit.action.value, hit.mode.value, hit.file, hit.line, reply_text))
            if hit.mode is Mode.SHADOW:
                log.info("shadow rule %s would %s at %s%s (session %s%s)", hit.name, hit.action.value, stage.value,
                         f": {reply_text}" if reply_text else "", session.id, f", txn {txn.id}" if txn else "")
        reply = final.reply if final is not None and final.action.replies else None
        if stage not in REPLYING_STAGES:
            reply = None
        disconnect = (final is not None and final.action is Action.DISCONNECT) or (
            reply is not None and reply.code == 421)
        if final is not None:
            log.info("rule %s: %s at %s%s (session %s%s)", final.name, final.action.value, stage.value,
                     f" -> {reply}" if reply else "", session.id, f", txn {txn.id}" if txn else "")
        verdict_record = {"reply": str(reply) if reply else None, "action": final.action.value if final else None,
                          "rule": final.name if final else None, "disconnect": disconnect, "delay": decision.delay}
        record = {"stage": stage.value, "policy": version.version, "checks": ev.record,
                  "rules": [{"rule": h.rule, "action": h.action, "mode": h.mode, "reply": h.reply} for h in hits],
                  "evaluated": [{"rule": n, "matched": m} for n, m in decision.evaluated],
                  "waited_for": ev.waits, "score": decision.score, "verdict": verdict_record,
                  "ms": round((time.perf_counter() - started) * 1000, 3)}
        return Verdict(reply=reply, disconnect=disconnect, delay=decision.delay, headers=decision.headers,
                       accepted=final is not None and final.action is Action.ACCEPT, hits=tuple(hits),
                       score=decision.score, record=record, policy=version.version)

    async def observe(self, event: str, session: Session, transaction: Transaction | None) -> None:
        try:
            state = self._sessions.get(session.id)
            pin = transaction.policy if transaction is not None else None
            version = pin.version if isinstance(pin, TransactionPin) else state.version if state else self._current
            if version is None or not version.observers:
                return
            stage = EVENT_STAGES.get(event, Stage.DISCONNECT)
            ctx = Evaluation(version.loaded.policy, version.checks, stage, session, transaction, self.env).context({})
            for name in version.observers:
                hook: Callable[[str, Any], Awaitable[None]] = version.checks[name].observe  # type: ignore[attr-defined]
                try:
                    await hook(event, ctx)
                except Exception:
                    log.exception("check %s failed to observe %s", name, event)
        finally:
            if event == "connection_closed":
                self._release(session)

    async def run_checks(self, names: Sequence[str], stage: Stage, session: Session,
                         transaction: Transaction | None) -> Mapping[str, Any]:
        try:
            version, _ = self._pin(stage, session, transaction)
            wanted = [n for n in names if n in version.checks]
            if not wanted:
                return {}
            ev = Evaluation(version.loaded.policy, version.checks, stage, session, transaction, self.env,
                            version.info)
            await ev.ensure(frozenset(wanted))
            return {n: r for n in wanted if (r := ev.result(n)) is not None}
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("run_checks failed at %s (session %s)", stage.value, session.id)
            return {}


_DECISIONS: dict[tuple[str, str, str, str], Any] = {}


def _count_decision(stage: str, rule: str, action: str, mode: str) -> None:
    """POLICY_DECISIONS with the labelled child cached (`labels()` costs microseconds)."""
    key = (stage, rule, action, mode)
    child = _DECISIONS.get(key)
    if child is None:
        if len(_DECISIONS) > 10000:  # rule names change across reloads: keep the cache bounded
            _DECISIONS.clear()
        child = _DECISIONS[key] = metrics.child(metrics.POLICY_DECISIONS, *key)
    child.inc()


def _base_score(stage: Stage, session: Session, txn: Transaction | None) -> float:
    if stage in TRANSACTION_STAGES and txn is not None:
        return session.score + txn.score
    return session.score


async def _start_checks(v: PolicyVersion) -> None:
    for check in v.checks.values():
        start = getattr(check, "start", None)
        if start is not None:
            await start()


async def _close_checks(v: PolicyVersion) -> None:
    v.closed = True
    for name, check in v.checks.items():
        close = getattr(check, "close", None)
        if close is None:
            continue
        try:
            await close()
        except Exception:
            log.exception("check %s failed to close", name)
