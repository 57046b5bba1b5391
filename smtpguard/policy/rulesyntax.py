"""Parsing one rule and one stage's thresholds (the `rules:` and `thresholds:` sections).

A mixin of the loader's builder: it reports through `error`/`warn` with the line of the key at
fault and returns None for anything invalid, so each bad rule gives exactly one problem and the
other rules are still checked. Invariants established here (relied on by the engine):
- action-specific keys appear exactly where they mean something (`reply:` only on replying
  actions, `points:` only on score, ...);
- replies are parsed, carry an enhanced code agreeing with the code, and their class fits the
  action (reject 5xx, tempfail 4xx, disconnect 421); templates name known fields;
- `add_header` and `tag` only at stages with a message; the disconnect stage only counts.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from smtpguard.checks.registry import CheckRegistry
from smtpguard.errors import Problem, ReplyError
from smtpguard.policy import defaults
from smtpguard.policy.conditions import All, Condition, Not, checks_of
from smtpguard.policy.model import MAX_DELAY, AcceptScope, Action, HeaderSpec, Mode, ReplySpec, Rule, Thresholds
from smtpguard.policy.syntax import ConditionParser
from smtpguard.policy.templates import TemplateError, parse_template
from smtpguard.policy.yamlsource import LineDict, LineList
from smtpguard.reply import Reply, parse_reply
from smtpguard.stage import TRANSACTION_STAGES, Stage

RULE_KEYS = ("name", "stage", "if", "unless", "action", "mode", "reply", "scope", "points", "header", "seconds",
             "description")
THRESHOLD_KEYS = ("reject", "tempfail", "tag", "mode", "reject_reply", "tempfail_reply", "tag_header")
_RULE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,79}$")
_HEADER_NAME = re.compile(r"^[!-9;-~]{1,76}$")
DEFAULT_TAG_HEADER = HeaderSpec("X-Spam-Flag", parse_template("YES (score {score})"))


class RuleSyntax:
    """Rule and threshold parsing; the host class provides reporting and outcome/list lookup."""

    file: str
    registry: CheckRegistry
    problems: list[Problem]

    error: Callable[[int, str], None]  # (line, message)
    warn: Callable[[str, int, str], None]  # (file, line, message)
    read_list: Callable[[str, int], list[tuple[int, str]] | None]
    resolve_outcome: Callable[[str, int, Stage], str | None]

    # ------------------------------------------------------------ rules

    def _rules_section(self, section: Any, line: int) -> list[Rule]:
        if section is None:
            return []
        if not isinstance(section, LineList):
            self.error(line, "`rules:` is a list of rules (each item starts with `- name: ...`)")
            return []
        out = []
        for i, item in enumerate(section):
            iline = section.line_of(i)
            if not isinstance(item, LineDict):
                self.error(iline, "a rule is a mapping with name:, stage:, action: ...")
                continue
            before = len(self.problems)
            rule = self._rule(item)
            if rule is not None and len(self.problems) == before:
                out.append(rule)
        return out

    def _rule(self, item: LineDict) -> Rule | None:
        line = item.line
        for key in item:
            if key not in RULE_KEYS:
                hint = " (conditions go under `if:`)" if key in ("outcome", "client_ip", "helo", "sender") else ""
                self.error(item.line_of(key), f"unknown rule key {key!r}{hint} (known: {', '.join(RULE_KEYS)})")
                return None
        for key in ("name", "stage", "action"):
            if key not in item:
                self.error(line, f"rule has no `{key}:`")
                return None
        name = item["name"]
        if not isinstance(name, str) or not _RULE_NAME.match(name):
            self.error(item.line_of("name"), f"bad rule name {name!r}: letters, digits, `_`, `.`, `-` "
                                             "(up to 80 characters)")
            return None
        stage = enum_of(Stage, item["stage"])
        if stage is None:
            self.error(item.line_of("stage"), f"unknown stage {item['stage']!r} (known: "
                                              f"{', '.join(s.value for s in Stage)})")
            return None
        action = enum_of(Action, item["action"])
        if action is None:
            self.error(item.line_of("action"), f"unknown action {item['action']!r} (known: "
                                               f"{', '.join(a.value for a in Action)})")
            return None
        mode = enum_of(Mode, item.get("mode", "enforce"))
        if mode is None:
            self.error(item.line_of("mode"), f"unknown mode {item['mode']!r} (known: enforce, shadow)")
            return None
        if not self._action_keys(item, action, stage):
            return None
        cond = self._condition(item, stage)
        if cond is False:
            return None
        condition = cond if cond is not True else None
        fields: dict[str, Any] = {}
        if action.replies and "reply" in item:
            spec = self._reply(item["reply"], item.line_of("reply"), action.value)
            if spec is None:
                return None
            fields["reply"] = spec
        if action is Action.ACCEPT:
            scope = enum_of(AcceptScope, item.get("scope", "stage"))
            if scope is None:
                self.error(item.line_of("scope"), f"unknown scope {item['scope']!r} (known: stage, transaction, "
                                                  "session)")
                return None
            if scope is AcceptScope.TRANSACTION and stage not in TRANSACTION_STAGES:
                self.error(item.line_of("scope"), f"scope transaction needs a transaction: there is none at the "
                                                  f"{stage.value} stage (use session)")
                return None
            fields["scope"] = scope
        if action is Action.SCORE:
            points = item["points"]
            if points == "check":
                if not checks_of(condition):
                    self.error(item.line_of("points"), "`points: check` takes the points of the checks the rule "
                                                       "tests, but this rule tests no outcome")
                    return None
                fields["points_from_check"] = True
            elif isinstance(points, bool) or not isinstance(points, int | float):
                self.error(item.line_of("points"), f"`points:` is a number (may be negative) or `check`, not "
                                                   f"{points!r}")
                return None
            else:
                fields["points"] = float(points)
        if action is Action.ADD_HEADER:
            header = self._header_spec(item["header"], item.line_of("header"))
            if header is None:
                return None
            fields["header"] = header
        if action is Action.DELAY:
            seconds = item["seconds"]
            if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not 0 < seconds <= MAX_DELAY:
                self.error(item.line_of("seconds"), f"`seconds:` is a number above 0 and at most {MAX_DELAY:g}")
                return None
            fields["seconds"] = float(seconds)
        description = item.get("description", "")
        return Rule(name=name, stage=stage, condition=condition, action=action, file=self.file, line=line,
                    mode=mode, description=str(description), checks=checks_of(condition), **fields)

    def _action_keys(self, item: LineDict, action: Action, stage: Stage) -> bool:
        """Action-specific keys present exactly where they mean something."""
        own = {"reply": action.replies, "scope": action is Action.ACCEPT, "points": action is Action.SCORE,
               "header": action is Action.ADD_HEADER, "seconds": action is Action.DELAY}
        for key, allowed in own.items():
            if key in item and not allowed:
                self.error(item.line_of(key), f"`{key}:` does not apply to action {action.value}")
                return False
        for key in ("points", "header", "seconds"):
            if own[key] and key not in item:
                self.error(item.line, f"action {action.value} needs `{key}:`")
                return False
        if stage is Stage.DISCONNECT and action is not Action.CONTINUE and action is not Action.SCORE:
            self.error(item.line_of("action"), "at the disconnect stage the client is gone: only `continue` and "
                                               "`score` (for logs and metrics) are possible")
            return False
        if action is Action.ADD_HEADER and stage not in TRANSACTION_STAGES:
            self.error(item.line_of("action"), f"add_header needs a message: use it at the mail, rcpt or data "
                                               f"stage, not {stage.value}")
            return False
        return True

    def _condition(self, item: LineDict, stage: Stage) -> Condition | bool:
        """The rule's condition; True = unconditional, False = an error was reported."""
        parser = ConditionParser(self, stage)
        parts: list[Condition] = []
        for key in ("if", "unless"):
            if key not in item:
                continue
            cond = parser.parse(item[key], item.line_of(key))
            if cond is None:
                return False
            parts.append(cond if key == "if" else Not(cond))
        if not parts:
            return True
        return parts[0] if len(parts) == 1 else All(tuple(parts))

    def _reply(self, value: Any, line: int, action: str) -> ReplySpec | None:
        if not isinstance(value, str):
            self.error(line, f"`reply:` is a string like '550 5.7.1 text', not {value!r}")
            return None
        try:
            reply = parse_reply(value)
        except ReplyError as exc:
            self.error(line, f"bad reply: {exc}")
            return None
        problem = defaults.reply_class_problem(action, reply.code)
        if problem is not None:
            self.error(line, f"bad reply {value!r}: {problem}")
            return None
        if reply.enhanced is None:
            self.error(line, f"reply {value!r} has no enhanced status code: write e.g. "
                             f"'{reply.code} {reply.code // 100}.7.1 {reply.text}'")
            return None
        try:
            template = parse_template(reply.text)
        except TemplateError as exc:
            self.error(line, str(exc))
            return None
        if not self._template_checks(template.fields, line):
            return None
        return ReplySpec(reply.code, reply.enhanced, template)

    def _template_checks(self, fields: tuple[str, ...], line: int) -> bool:
        for f in fields:
            if "." in f and f.split(".", 1)[0] not in self.registry:
                self.error(line, f"template field {{{f}}}: " + self.registry.unknown_message(f.split(".", 1)[0]))
                return False
        return True

    def _header_spec(self, value: Any, line: int) -> HeaderSpec | None:
        if not isinstance(value, LineDict) or set(value) != {"name", "value"}:
            self.error(line, "`header:` takes {name: X-Header-Name, value: text}")
            return None
        name, text = value["name"], value["value"]
        if not isinstance(name, str) or not _HEADER_NAME.match(name):
            self.error(value.line_of("name"), f"bad header name {name!r} (printable ASCII without `:` or spaces)")
            return None
        if not isinstance(text, str | int | float) or isinstance(text, bool):
            self.error(value.line_of("value"), "header `value:` is a string")
            return None
        try:
            template = parse_template(str(text))
            Reply(250, None, template.render(lambda _: ""))  # the literal parts: no control characters
        except (TemplateError, ReplyError) as exc:
            self.error(value.line_of("value"), f"bad header value: {exc}")
            return None
        if not self._template_checks(template.fields, value.line_of("value")):
            return None
        return HeaderSpec(name, template)

    # ------------------------------------------------------------ thresholds

    def _thresholds_section(self, section: Any, line: int, out: dict[Stage, Thresholds]) -> None:
        if section is None:
            return
        if not isinstance(section, LineDict):
            self.error(line, "`thresholds:` maps a stage to {reject: N, tempfail: N, tag: N}")
            return
        for stage_name, spec in section.items():
            sline = section.line_of(stage_name)
            stage = enum_of(Stage, stage_name)
            if stage is None or stage is Stage.DISCONNECT:
                self.error(sline, f"thresholds: {stage_name!r} is not a stage that can reply")
                continue
            if stage in out:
                self.error(sline, f"thresholds for {stage.value} already set at {out[stage].file}:{out[stage].line}")
                continue
            t = self._threshold(stage, spec, sline)
            if t is not None:
                out[stage] = t

    def _threshold(self, stage: Stage, spec: Any, line: int) -> Thresholds | None:
        if not isinstance(spec, LineDict):
            self.error(line, "thresholds of a stage are a mapping {reject: N, tempfail: N, tag: N}")
            return None
        for key in spec:
            if key not in THRESHOLD_KEYS:
                self.error(spec.line_of(key), f"unknown threshold key {key!r} (known: {', '.join(THRESHOLD_KEYS)})")
                return None
        values: dict[str, Any] = {}
        for key in ("reject", "tempfail", "tag"):
            if key in spec:
                v = spec[key]
                if isinstance(v, bool) or not isinstance(v, int | float):
                    self.error(spec.line_of(key), f"threshold {key} is a number of points, not {v!r}")
                    return None
                values[key] = float(v)
        if not values:
            self.error(line, "thresholds need at least one of reject, tempfail, tag")
            return None
        if "tag" in values and stage not in TRANSACTION_STAGES:
            self.error(spec.line_of("tag"), f"tag adds a header: use it at mail, rcpt or data, not {stage.value}")
            return None
        mode = enum_of(Mode, spec.get("mode", "enforce"))
        if mode is None:
            self.error(spec.line_of("mode"), "mode is enforce or shadow")
            return None
        for key, action in (("reject_reply", "reject"), ("tempfail_reply", "tempfail")):
            if key in spec:
                reply = self._reply(spec[key], spec.line_of(key), action)
                if reply is None:
                    return None
                values[key] = reply
        if "tag_header" in spec:
            header = self._header_spec(spec["tag_header"], spec.line_of("tag_header"))
            if header is None:
                return None
            values["tag_header"] = header
        elif "tag" in values:
            values["tag_header"] = DEFAULT_TAG_HEADER
        if "reject" in values and "tempfail" in values and values["tempfail"] >= values["reject"]:
            self.warn(self.file, line, f"thresholds for {stage.value}: tempfail ({values['tempfail']:g}) is not "
                                       f"below reject ({values['reject']:g}), so it never applies")
        return Thresholds(stage=stage, file=self.file, line=line, mode=mode, **values)


def enum_of(kind: Any, value: Any) -> Any:
    if not isinstance(value, str):
        return None
    try:
        return kind(value.strip().lower())
    except ValueError:
        return None
