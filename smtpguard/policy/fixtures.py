"""`smtpguard test`: run policy fixtures (YAML: sessions + expected verdicts per stage) offline.

A fixture file:

    policy: ../default.yaml          # policy file or directory, relative to this file
    hostname: mx.example.net         # optional: our hostname (helo.claims_us)
    cases:
      - name: SPF fail is refused at MAIL
        client_ip: 198.51.100.7
        helo: mail.example.org
        sender: alice@example.org
        rcpt: [bob@example.net]
        outcomes: [spf.fail]         # what the non-pure checks report (offline)
        command: [VRFY root]         # optional: command-stage verbs (expect.command = the last)
        expect:
          mail: "550 5.7.23"         # pass | accept | reject | tempfail | disconnect |
                                     # "not reached" | a reply prefix
        shadow: [dnsbl-zen]          # optional: rules expected to fire in shadow mode

Invariants: evaluation is offline (`offline.py`: given outcomes, pure checks for real, no
network); every fixture problem is a `file:line: message`; a mismatch prints what was
expected, what happened and the full explain trace of that case, and makes the run fail.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from smtpguard.checks.base import CheckEnv
from smtpguard.checks.registry import CheckRegistry
from smtpguard.errors import ConfigError, Problem
from smtpguard.policy.explain import render_runs
from smtpguard.policy.loader import LoadedPolicy, Source, load_policy, load_sources
from smtpguard.policy.offline import offline_policy, outcome_problems
from smtpguard.policy.runner import PolicyRunner
from smtpguard.policy.scenario import Scenario, StageRun, run_scenario
from smtpguard.policy.yamlsource import LineDict, LineList, parse_yaml
from smtpguard.stage import Stage

FILE_KEYS = ("policy", "hostname", "local_addresses", "cases")
CASE_KEYS = ("name", "client_ip", "client_name", "helo", "esmtp", "tls", "listener", "early_talker", "pipelining",
             "command", "sender", "rcpt", "message", "outcomes", "expect", "shadow", "matched")
EXPECT_STAGES = ("connect", "helo", "command", "mail", "rcpt", "data", "score")
WORDS = ("pass", "accept", "reject", "tempfail", "disconnect", "not reached")


@dataclass(slots=True)
class Case:
    name: str
    line: int
    scenario: Scenario
    outcomes: list[str]
    expect: dict[str, Any]
    shadow: list[str] = field(default_factory=list)
    matched: list[str] = field(default_factory=list)


@dataclass(slots=True)
class FixtureFile:
    path: Path
    policy: Path | None
    env: CheckEnv
    cases: list[Case]


# ---------------------------------------------------------------- parsing


def parse_fixture(path: Path) -> FixtureFile:
    """Read one fixture file; `ConfigError` with located problems when it is malformed."""
    name = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(Problem(name, None, f"cannot read fixture: {exc}")) from None
    data = parse_yaml(text, name)
    problems: list[Problem] = []
    if not isinstance(data, LineDict):
        raise ConfigError(Problem(name, 1, "a fixture file is a mapping with policy: and cases:"))
    for key in data:
        if key not in FILE_KEYS:
            problems.append(Problem(name, data.line_of(key), f"unknown key {key!r} (known: {', '.join(FILE_KEYS)})"))
    policy = data.get("policy")
    if policy is not None and not isinstance(policy, str):
        problems.append(Problem(name, data.line_of("policy"), "policy: is a path"))
    env = CheckEnv(hostname=str(data.get("hostname", "mx.test")),
                   local_addresses=frozenset(str(a) for a in data.get("local_addresses") or ()))
    cases: list[Case] = []
    raw_cases = data.get("cases")
    if not isinstance(raw_cases, LineList) or not raw_cases:
        problems.append(Problem(name, data.line_of("cases"), "cases: is a non-empty list of cases"))
        raw_cases = LineList()
    for i, raw in enumerate(raw_cases):
        case = _case(raw, raw_cases.line_of(i), name, problems)
        if case is not None:
            cases.append(case)
    if problems:
        raise ConfigError(problems)
    base = path.parent
    target = Path(os.path.normpath(base / policy)) if isinstance(policy, str) else None
    return FixtureFile(path, target, env, cases)


def _case(raw: Any, line: int, file: str, problems: list[Problem]) -> Case | None:
    if not isinstance(raw, LineDict):
        problems.append(Problem(file, line, "a case is a mapping with name:, client_ip:, ... expect:"))
        return None
    before = len(problems)
    for key in raw:
        if key not in CASE_KEYS:
            known = ", ".join(CASE_KEYS)
            problems.append(Problem(file, raw.line_of(key), f"unknown case key {key!r} (known: {known})"))
    expect = raw.get("expect", LineDict(raw.line))
    if not isinstance(expect, LineDict):
        problems.append(Problem(file, raw.line_of("expect"), "expect: maps a stage to pass/reject/... or a reply"))
        expect = LineDict(raw.line)
    for key, value in expect.items():
        if key not in EXPECT_STAGES:
            problems.append(Problem(file, expect.line_of(key), f"unknown stage {key!r} in expect (known: "
                                                                f"{', '.join(EXPECT_STAGES)})"))
        elif key == "score":
            if isinstance(value, bool) or not isinstance(value, int | float):
                problems.append(Problem(file, expect.line_of(key), "expect.score is a number"))
        elif key == "rcpt" and isinstance(value, LineDict):
            for rcpt, exp in value.items():
                _check_expectation(exp, value.line_of(rcpt), file, problems)
        else:
            _check_expectation(value, expect.line_of(key), file, problems)
    rcpt = raw.get("rcpt", [])
    rcpts = [rcpt] if isinstance(rcpt, str) else list(rcpt) if isinstance(rcpt, list) else None
    if rcpts is None or not all(isinstance(r, str) for r in rcpts):
        problems.append(Problem(file, raw.line_of("rcpt"), "rcpt: is an address or a list of addresses"))
        rcpts = []
    message = raw.get("message")
    if message is not None and not isinstance(message, str):
        problems.append(Problem(file, raw.line_of("message"), "message: is the message text"))
        message = None
    outcomes = raw.get("outcomes") or []
    if not isinstance(outcomes, list) or not all(isinstance(o, str) for o in outcomes):
        problems.append(Problem(file, raw.line_of("outcomes"), "outcomes: is a list of outcome names"))
        outcomes = []
    command = raw.get("command", [])
    commands = [command] if isinstance(command, str) else command if isinstance(command, list) else None
    if commands is None or not all(isinstance(c, str) for c in commands):
        problems.append(Problem(file, raw.line_of("command"), "command: is a command line or a list of them"))
    if len(problems) > before or commands is None:
        return None
    sc = Scenario(
        client_ip=str(raw.get("client_ip", "192.0.2.1")), helo=_opt_str(raw.get("helo")),
        sender=_opt_str(raw.get("sender")), rcpts=rcpts, message=message.encode() if message is not None else None,
        listener=str(raw.get("listener", "mx")), tls=bool(raw.get("tls", False)),
        client_name=_opt_str(raw.get("client_name")), esmtp=bool(raw.get("esmtp", True)),
        early_talker=bool(raw.get("early_talker", False)), pipelining=bool(raw.get("pipelining", False)),
        commands=commands,
    )
    return Case(str(raw.get("name", f"case at line {raw.line}")), raw.line, sc, list(outcomes), dict(expect),
                list(raw.get("shadow") or []), list(raw.get("matched") or []))


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)


def _check_expectation(value: Any, line: int, file: str, problems: list[Problem]) -> None:
    if not isinstance(value, str | int) or (isinstance(value, str) and value not in WORDS
                                            and not value[:3].isdigit()):
        problems.append(Problem(file, line, f"expectation {value!r} is not one of {', '.join(WORDS)} or a reply "
                                            "prefix like '550 5.7.1'"))


# ---------------------------------------------------------------- running


def describe(v: Any) -> str:
    if v.reply is not None:
        return str(v.reply) + (" (and disconnect)" if v.disconnect else "")
    return "accept" if v.accepted else "pass"


def expectation_met(expected: str | int, run: StageRun | None) -> bool:
    exp = str(expected)
    if run is None:
        return exp == "not reached"
    v = run.verdict
    if exp == "pass":
        return v.reply is None
    if exp == "accept":
        return v.accepted
    if exp == "reject":
        return v.reply is not None and v.reply.is_permanent
    if exp == "tempfail":
        return v.reply is not None and v.reply.is_temporary and not v.disconnect
    if exp == "disconnect":
        return v.disconnect
    return v.reply is not None and str(v.reply).startswith(exp)


def compare(case: Case, runs: list[StageRun]) -> list[str]:
    """Human-readable differences between what the case expects and what happened."""
    diffs: list[str] = []
    by_stage: dict[str, list[StageRun]] = {}
    for run in runs:
        by_stage.setdefault(run.stage.value, []).append(run)
    ended = runs[-1].stage.value if runs else "connect"
    for stage, expected in case.expect.items():
        if stage == "score":
            got_score = runs[-1].verdict.score if runs else 0.0
            if float(expected) != got_score:
                diffs.append(f"score: expected {expected}, got {got_score:g}")
            continue
        if stage == "rcpt":
            rcpt_runs = {r.recipient: r for r in by_stage.get("rcpt", [])}
            wanted = expected if isinstance(expected, dict) else {r: expected for r in case.scenario.rcpts}
            for rcpt, exp in wanted.items():
                got = rcpt_runs.get(rcpt)
                if not expectation_met(exp, got):
                    diffs.append(f"rcpt <{rcpt}>: expected {exp}, got "
                                 + (describe(got.verdict) if got else f"not reached (the session ended at {ended})"))
            continue
        got_runs = by_stage.get(stage)
        got = (got_runs[-1] if stage == "command" else got_runs[0]) if got_runs else None
        if not expectation_met(expected, got):
            diffs.append(f"{stage}: expected {expected}, got "
                         + (describe(got.verdict) if got else f"not reached (the session ended at {ended})"))
    fired = {(h.rule, h.mode) for r in runs for h in r.verdict.hits}
    for rule in case.shadow:
        if (rule, "shadow") not in fired:
            diffs.append(f"shadow: expected rule {rule!r} to fire in shadow mode; it did not")
    for rule in case.matched:
        if not any(name == rule for name, _ in fired):
            diffs.append(f"matched: expected rule {rule!r} to match; it did not")
    return diffs


def load_fixture_policy(fixture: FixtureFile, policy_dir: Path | None, registry: CheckRegistry) -> LoadedPolicy:
    target = policy_dir or fixture.policy
    if target is None:
        raise ConfigError(Problem(str(fixture.path), 1, "no policy: in the fixture and no --policy given"))
    if target.is_dir():
        return load_policy(target, fixture.env, registry)
    try:
        text = target.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(Problem(str(fixture.path), 1, f"cannot read policy {target}: {exc}")) from None
    return load_sources([Source(str(target), text, target.parent)], fixture.env, registry)


async def run_case(loaded: LoadedPolicy, fixture: FixtureFile, case: Case) -> list[StageRun]:
    runner = PolicyRunner.from_loaded(offline_policy(loaded, case.outcomes), fixture.env)
    return await run_scenario(runner, case.scenario, session_id="test")


def run_fixture_file(path: Path, policy_dir: Path | None, registry: CheckRegistry,
                     out: Callable[[str], None]) -> tuple[int, int]:
    """(cases run, cases failed) for one file; fixture or policy problems count as one failure."""
    try:
        fixture = parse_fixture(path)
        loaded = load_fixture_policy(fixture, policy_dir, registry)
    except ConfigError as exc:
        for p in exc.problems:
            out(p.render())
        return 1, 1 if any(p.severity != "warning" for p in exc.problems) else 0
    failed = 0
    for case in fixture.cases:
        where = f"{path}:{case.line}"
        unusable = outcome_problems(case.outcomes, loaded.checks)
        if unusable:
            failed += 1
            for msg in unusable:
                out(f"{where}: {msg}")
            continue
        runs = asyncio.run(run_case(loaded, fixture, case))
        diffs = compare(case, runs)
        if diffs:
            failed += 1
            out(f"FAIL {case.name} ({where})")
            for d in diffs:
                out(f"  - {d}")
            out("  trace:")
            render_runs([r for r in runs if r.stage is not Stage.DISCONNECT], loaded.policy, lambda s: out("    " + s))
        else:
            out(f"ok   {case.name}")
    return len(fixture.cases), failed


def fixture_files(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml") and not p.name.startswith("."))
    return [path]
