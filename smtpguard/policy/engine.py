"""Pure evaluation of one stage: (policy, facts, check results) -> `NeedChecks` or `Decision`.

Invariants (tests/unit/test_policy_engine.py, test_policy_properties.py):
- no I/O, no clock, no globals: the same policy, facts and results give the same answer;
- rules are tried in policy order; the first ENFORCED terminal rule (accept, reject,
  tempfail, disconnect) that matches ends the stage -- which check finished first never
  matters, because results are read by check name;
- a rule whose condition is still unknown stops evaluation with `NeedChecks` naming only the
  checks that can decide it; the caller runs them and calls again, resuming at that rule
  (results only grow, so earlier rules stay decided; at most one round per check);
- shadow rules are recorded with their would-be reply and never change the outcome;
- score rules listed in `already_scored` (they counted earlier in this transaction/session)
  are recorded but not added again;
- thresholds apply only when no terminal rule matched; every emitted reply is a valid `Reply`.
"""

from __future__ import annotations

from dataclasses import dataclass

from smtpguard.errors import ReplyError
from smtpguard.policy import defaults
from smtpguard.policy.conditions import Facts
from smtpguard.policy.model import MAX_DELAY, Action, HeaderSpec, Mode, Policy, ReplySpec, Rule, Thresholds
from smtpguard.reply import Reply, sanitize_text
from smtpguard.stage import Stage


@dataclass(frozen=True, slots=True)
class Progress:
    """Where an evaluation stopped: the rules before `index` are decided for good (results
    only grow), so evaluation can resume there instead of starting over."""

    index: int = 0
    score: float = 0.0
    hits: tuple[Hit, ...] = ()
    headers: tuple[tuple[str, str], ...] = ()
    scored: tuple[str, ...] = ()
    evaluated: tuple[tuple[str, bool], ...] = ()
    points: float = 0.0
    delay: float = 0.0


@dataclass(frozen=True, slots=True)
class NeedChecks:
    names: frozenset[str]
    rule: str  # the rule that needs them (for the decision record)
    progress: Progress = Progress()


@dataclass(frozen=True, slots=True)
class Hit:
    """A rule (or threshold) that matched; `reply` is the (would-be) reply of replying actions."""

    name: str
    action: Action
    mode: Mode
    file: str
    line: int
    reply: Reply | None = None
    points: float = 0.0
    header: tuple[str, str] | None = None
    seconds: float = 0.0
    scope: str | None = None  # accept scope


@dataclass(frozen=True, slots=True)
class Decision:
    hits: tuple[Hit, ...] = ()
    final: Hit | None = None  # the enforced terminal hit; None = no objection
    points: float = 0.0  # points added now (enforced, not already scored)
    scored: tuple[str, ...] = ()  # score rules that added points now
    headers: tuple[tuple[str, str], ...] = ()
    delay: float = 0.0
    score: float = 0.0  # the score after this stage
    evaluated: tuple[tuple[str, bool], ...] = ()  # (rule, matched) in order


def evaluate_stage(policy: Policy, facts: Facts, already_scored: frozenset[str] = frozenset(),
                   resume: Progress | None = None) -> NeedChecks | Decision:
    """Evaluate the rules of `facts.stage` (from `resume` when given: the `progress` of the
    previous `NeedChecks`). Mutates only `facts.score` (the running score)."""
    start = resume or Progress(score=facts.score)
    facts.score = start.score
    hits = list(start.hits)
    headers = list(start.headers)
    scored = list(start.scored)
    evaluated = list(start.evaluated)
    points = start.points
    delay = start.delay
    final: Hit | None = None
    rules = policy.rules_at(facts.stage)
    for index in range(start.index, len(rules)):
        rule = rules[index]
        matched = True if rule.condition is None else rule.condition.test(facts)
        if matched is None:
            assert rule.condition is not None
            progress = Progress(index, facts.score, tuple(hits), tuple(headers), tuple(scored), tuple(evaluated),
                                points, delay)
            return NeedChecks(frozenset(rule.condition.pending(facts)), rule.name, progress)
        evaluated.append((rule.name, matched))
        if not matched:
            continue
        hit = _hit(rule, facts)
        hits.append(hit)
        if rule.mode is Mode.SHADOW:
            continue
        if rule.action is Action.SCORE:
            if rule.name not in already_scored:
                facts.score += hit.points
                points += hit.points
                scored.append(rule.name)
        elif rule.action is Action.ADD_HEADER and hit.header is not None:
            headers.append(hit.header)
        elif rule.action is Action.DELAY:
            delay += hit.seconds
        elif rule.action.terminal:
            final = hit
            break
    if final is None:
        thresholds = policy.thresholds.get(facts.stage)
        if thresholds is not None:
            final, tag = _thresholds(thresholds, facts, hits)
            if tag is not None:
                headers.append(tag)
    return Decision(tuple(hits), final, points, tuple(scored), tuple(headers), min(delay, MAX_DELAY), facts.score,
                    tuple(evaluated))


def _hit(rule: Rule, facts: Facts) -> Hit:
    action = rule.action
    if action.replies:
        return Hit(rule.name, action, rule.mode, rule.file, rule.line,
                   reply=render_reply(rule.reply, facts.stage, action.value, facts, rule.name))
    if action is Action.SCORE:
        pts = rule.points
        if rule.points_from_check:
            pts = sum(r.score for c in sorted(rule.checks) if (r := facts.result(c)) is not None)
        return Hit(rule.name, action, rule.mode, rule.file, rule.line, points=pts)
    if action is Action.ADD_HEADER and rule.header is not None:
        header = render_header(rule.header, facts, rule.name)
        return Hit(rule.name, action, rule.mode, rule.file, rule.line, header=header)
    if action is Action.DELAY:
        return Hit(rule.name, action, rule.mode, rule.file, rule.line, seconds=rule.seconds)
    if action is Action.ACCEPT:
        return Hit(rule.name, action, rule.mode, rule.file, rule.line, scope=rule.scope.value)
    return Hit(rule.name, action, rule.mode, rule.file, rule.line)


def _thresholds(t: Thresholds, facts: Facts, hits: list[Hit]) -> tuple[Hit | None, tuple[str, str] | None]:
    """(enforced terminal hit, tag header) for the running score; shadow ones only recorded."""
    score = facts.score
    hit: Hit | None = None
    levels = (("reject", Action.REJECT, t.reject, t.reject_reply),
              ("tempfail", Action.TEMPFAIL, t.tempfail, t.tempfail_reply))
    for key, action, limit, spec in levels:
        if limit is not None and score >= limit:
            reply = render_reply(spec, facts.stage, action.value, facts, f"threshold.{key}")
            hit = Hit(f"threshold.{facts.stage.value}.{key}", action, t.mode, t.file, t.line, reply=reply)
            break
    if hit is None and t.tag is not None and score >= t.tag and t.tag_header is not None:
        header = render_header(t.tag_header, facts, "threshold.tag")
        hits.append(Hit(f"threshold.{facts.stage.value}.tag", Action.ADD_HEADER, t.mode, t.file, t.line, header=header))
        return None, header if t.mode is Mode.ENFORCE else None
    if hit is None:
        return None, None
    hits.append(hit)
    return (hit if t.mode is Mode.ENFORCE else None), None


# ---------------------------------------------------------------- templates


def template_value(facts: Facts, name: str, rule: str) -> str | None:
    """The value of a template field (raw: `Template.render` sanitises and caps it)."""
    s, t = facts.session, facts.transaction
    if "." in name:
        check, _, key = name.partition(".")
        result = facts.result(check)
        return None if result is None else result.template_fields.get(key)
    if name == "client_ip":
        return str(s.client_ip)
    if name == "client_name":
        return s.client_name
    if name == "helo":
        return s.helo
    if name == "listener":
        return s.listener
    if name == "command":
        return s.command
    if name == "score":
        return f"{facts.score:g}"
    if name == "rule":
        return rule
    if name == "txn":
        return t.id if t is not None else s.id
    if name == "sender":
        return None if t is None or t.sender is None else (t.sender or "<>")
    if name == "recipient":
        return None if t is None else t.recipient
    return None


def render_reply(spec: ReplySpec | None, stage: Stage, action: str, facts: Facts, rule: str) -> Reply:
    """The rule's reply with templates expanded, or the table default for (stage, action)."""
    if spec is None:
        return defaults.default_reply(stage, action)
    text = spec.text.render(lambda name: template_value(facts, name, rule))
    try:
        return Reply(spec.code, spec.enhanced, sanitize_text(text))
    except ReplyError:  # unreachable: literals were validated at load, values sanitised
        return defaults.default_reply(stage, action)


def render_header(spec: HeaderSpec, facts: Facts, rule: str) -> tuple[str, str]:
    return spec.name, sanitize_text(spec.value.render(lambda name: template_value(facts, name, rule)), 900)
