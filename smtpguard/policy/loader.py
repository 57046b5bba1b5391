"""Loading a policy directory: YAML files in file-name order -> one validated `Policy`.

Invariants:
- `load_policy` either returns a complete `LoadedPolicy` or raises `ConfigError` carrying
  every problem found (errors and warnings), each as `file:line: message`; it never lets a
  yaml, pydantic or regex exception escape (no tracebacks for operators);
- files are `*.yaml` / `*.yml` directly in the directory, hidden files skipped, sorted by
  name; list files (`@name`) are resolved relative to the file that names them;
- the version is a short hash of every file under the policy directory (names and bytes, hidden
  paths skipped: list files and files that check options name are covered too) plus the policy
  files and list files from elsewhere, so identical inputs give the identical version and any
  change to an input gives a new one;
- the checks the policy tests (plus `checks:` entries and their `requires`) are
  instantiated here, once per version: the runner owns them from then on.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from smtpguard.checks.base import Check, CheckEnv
from smtpguard.checks.registry import CheckRegistry
from smtpguard.errors import ConfigError, Problem
from smtpguard.lists import read_list_file
from smtpguard.policy.model import (
    Action,
    CheckConfig,
    Mode,
    Policy,
    Rule,
    Thresholds,
)
from smtpguard.policy.rulesyntax import RuleSyntax
from smtpguard.policy.yamlsource import LineDict, parse_yaml
from smtpguard.stage import TRANSACTION_STAGES, Scope, Stage

TOP_KEYS = ("rules", "checks", "thresholds")


@dataclass(frozen=True, slots=True)
class Source:
    """One policy file's text; `name` is what problems print, `base` resolves `@lists`."""

    name: str
    text: str
    base: Path | None


@dataclass(frozen=True, slots=True)
class LoadedPolicy:
    policy: Policy
    checks: Mapping[str, Check]
    warnings: tuple[Problem, ...] = ()
    list_files: tuple[Path, ...] = ()


def read_sources(policy_dir: Path) -> list[Source]:
    """The policy files of a directory, in file-name order (blocking I/O)."""
    if not policy_dir.is_dir():
        raise ConfigError(Problem(str(policy_dir), None, "policy directory does not exist"))
    sources = []
    for path in sorted(policy_dir.iterdir(), key=lambda p: p.name):
        if path.name.startswith(".") or path.suffix not in (".yaml", ".yml") or not path.is_file():
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(Problem(str(path), None, f"cannot read policy file: {exc}")) from None
        sources.append(Source(str(path), text, path.parent))
    return sources


def load_policy(policy_dir: Path | None, env: CheckEnv, registry: CheckRegistry,
                extra: list[Source] | None = None) -> LoadedPolicy:
    """Read and validate a directory (plus `extra` sources, e.g. a built-in policy)."""
    sources = list(extra or [])
    salt = b""
    if policy_dir is not None:
        sources += read_sources(policy_dir)
        salt = tree_digest(policy_dir)
    return load_sources(sources, env, registry, policy_dir, salt)


def load_sources(sources: list[Source], env: CheckEnv, registry: CheckRegistry,
                 policy_dir: Path | None = None, salt: bytes = b"") -> LoadedPolicy:
    builder = _Builder(env, registry, policy_dir)
    builder.digest.update(salt)
    return builder.build(sources)


def tree_digest(directory: Path) -> bytes:
    """A hash of every non-hidden file below `directory` (relative names and bytes; blocking)."""
    digest = hashlib.sha256()
    for path in sorted(directory.rglob("*")):
        rel = path.relative_to(directory)
        if any(part.startswith(".") for part in rel.parts) or not path.is_file():
            continue
        try:
            data = path.read_bytes()
        except OSError:
            continue  # unreadable here: the loader reports it if the policy needs it
        digest.update(f"{rel.as_posix()}\0{len(data)}\0".encode())
        digest.update(data)
    return digest.digest()


@dataclass(slots=True)
class _Raw:
    file: str
    base: Path | None
    data: LineDict


@dataclass(slots=True)
class _Builder(RuleSyntax):
    env: CheckEnv
    registry: CheckRegistry
    policy_dir: Path | None
    problems: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    checks: dict[str, Check] = field(default_factory=dict)
    check_configs: dict[str, CheckConfig] = field(default_factory=dict)
    failed_checks: set[str] = field(default_factory=set)
    digest: Any = field(default_factory=hashlib.sha256)
    list_files: list[Path] = field(default_factory=list)
    list_cache: dict[Path, list[tuple[int, str]]] = field(default_factory=dict)
    file: str = ""
    base: Path | None = None

    # ------------------------------------------------------------ reporting

    def error(self, line: int, message: str) -> None:
        self.problems.append(Problem(self.file, line, message))

    def warn(self, file: str, line: int, message: str) -> None:
        self.warnings.append(Problem(file, line, message, "warning"))

    # ------------------------------------------------------------ main

    def build(self, sources: list[Source]) -> LoadedPolicy:
        raws: list[_Raw] = []
        for src in sources:
            self.digest.update(f"{Path(src.name).name}\0{len(src.text)}\0".encode())
            self.digest.update(src.text.encode())
            try:
                data = parse_yaml(src.text, src.name)
            except ConfigError as exc:
                self.problems.extend(exc.problems)
                continue
            if not isinstance(data, LineDict):
                self.problems.append(Problem(src.name, 1, "a policy file is a mapping with rules:, checks: "
                                                           "and/or thresholds:"))
                continue
            raws.append(_Raw(src.name, src.base, data))
            self.file = src.name
            for key in data:
                if key not in TOP_KEYS:
                    self.error(data.line_of(key), f"unknown top-level key {key!r} (known: {', '.join(TOP_KEYS)})")
        for raw in raws:
            self._enter(raw)
            self._check_section(raw.data.get("checks"), raw.data.line_of("checks"))
        self._instantiate_configured()
        rules: list[Rule] = []
        thresholds: dict[Stage, Thresholds] = {}
        seen: dict[str, Rule] = {}
        for raw in raws:
            self._enter(raw)
            for rule in self._rules_section(raw.data.get("rules"), raw.data.line_of("rules")):
                first = seen.get(rule.name)
                if first is not None:
                    self.error(rule.line, f"duplicate rule name {rule.name!r} (first defined at "
                                          f"{first.file}:{first.line})")
                    continue
                seen[rule.name] = rule
                rules.append(rule)
            self._thresholds_section(raw.data.get("thresholds"), raw.data.line_of("thresholds"), thresholds)
        if not self.problems:
            self._lint(rules)
        if self.problems:
            raise ConfigError(self.problems + self.warnings)
        version = self.digest.hexdigest()[:12]
        policy = Policy.build(tuple(rules), thresholds, self.check_configs,
                              tuple(s.name for s in sources), version)
        return LoadedPolicy(policy, dict(self.checks), tuple(self.warnings), tuple(self.list_files))

    def _enter(self, raw: _Raw) -> None:
        self.file = raw.file
        self.base = raw.base

    # ------------------------------------------------------------ checks

    def _check_section(self, section: Any, line: int) -> None:
        if section is None:
            return
        if not isinstance(section, LineDict):
            self.error(line, "`checks:` is a mapping of check name to options")
            return
        for name, options in section.items():
            nline = section.line_of(name)
            if options is None:
                options = LineDict(nline)
            if not isinstance(options, LineDict):
                self.error(nline, f"options of check {name!r} must be a mapping")
                continue
            if name not in self.registry:
                self.error(nline, self.registry.unknown_message(name))
                continue
            previous = self.check_configs.get(name)
            if previous is not None:
                if dict(previous.options) != dict(options):
                    self.error(nline, f"conflicting options for check {name!r} (also configured at "
                                      f"{previous.file}:{previous.line}); configure a check in one file")
                continue
            self.check_configs[name] = CheckConfig(name, options, self.file, nline, self.base)

    def _instantiate_configured(self) -> None:
        for name, cfg in self.check_configs.items():
            self.file = cfg.file
            self._instantiate(name, cfg.line)

    def _instantiate(self, name: str, line: int) -> Check | None:
        """The check instance, built from its `checks:` options or defaults (with requires)."""
        if name in self.checks:
            return self.checks[name]
        if name in self.failed_checks:
            return None
        cfg = self.check_configs.get(name)
        file, where = (cfg.file, cfg.line) if cfg else (self.file, line)
        options = cfg.options if cfg else {}
        key_lines = options.key_lines if isinstance(options, LineDict) else {}
        base = (cfg.base if cfg is not None else self.base) or self.policy_dir
        try:
            check = self.registry.create(name, options, self.env, file=file, line=where, key_lines=key_lines,
                                         policy_dir=base)
        except ConfigError as exc:
            self.failed_checks.add(name)
            if cfg is None:  # defaults did not validate: say so at the rule that needs the check
                for p in exc.problems:
                    self.problems.append(Problem(file, where, f"check {name!r} needs options in a `checks:` "
                                                              f"section: {p.message}"))
            else:
                self.problems.extend(exc.problems)
            return None
        self.checks[name] = check
        for req in getattr(check, "requires", ()):
            if req not in self.registry:
                self.problems.append(Problem(file, where, f"check {name!r} requires {req!r}: "
                                                          + self.registry.unknown_message(req)))
                continue
            self._instantiate(req, line)
        return check

    def resolve_outcome(self, name: str, line: int, stage: Stage) -> str | None:
        check_name, dot, what = name.partition(".")
        if not dot or not what:
            self.error(line, f"outcome {name!r} must be spelled <check>.<outcome>, e.g. spf.fail")
            return None
        if check_name not in self.registry:
            self.error(line, self.registry.unknown_message(check_name))
            return None
        check = self._instantiate(check_name, line)
        if check is None:
            return None
        declared = check.declared_outcomes()
        if name not in declared:
            self.error(line, f"unknown outcome {name!r} (check {check_name} declares: "
                             f"{', '.join(sorted(declared))})")
            return None
        if not check.stage.facts_available_at(stage):
            self.error(line, f"outcome {name!r} cannot be tested at the {stage.value} stage: the {check_name} "
                             f"check needs facts of the {check.stage.value} stage")
            return None
        if check.scope is Scope.RECIPIENT and stage is not Stage.RCPT:
            self.error(line, f"outcome {name!r} is per recipient: test it at the rcpt stage")
            return None
        if check.scope is Scope.TRANSACTION and stage not in TRANSACTION_STAGES:
            self.error(line, f"outcome {name!r} is per transaction: test it at the mail, rcpt or data stage")
            return None
        return check_name

    # ------------------------------------------------------------ list files

    def read_list(self, ref: str, line: int) -> list[tuple[int, str]] | None:
        rel = ref[1:].strip()
        if not rel:
            self.error(line, "`@` must be followed by a list file name")
            return None
        path = Path(rel)
        if not path.is_absolute():
            path = (self.base or self.policy_dir or Path.cwd()) / path
        if path in self.list_cache:
            return self.list_cache[path]
        if not path.is_file():
            self.error(line, f"list file {rel!r} not found (looked for {path})")
            return None
        try:
            entries = read_list_file(path)
        except ConfigError as exc:
            self.error(line, f"list file {rel!r}: {exc.problems[0].message}")
            return None
        self.digest.update(f"{rel}\0{entries!r}\0".encode())  # the entries: comments do not count
        self.list_cache[path] = entries
        self.list_files.append(path)
        return entries

    # ------------------------------------------------------------ lint

    def _lint(self, rules: list[Rule]) -> None:
        blocker: dict[Stage, Rule] = {}
        for rule in rules:
            first = blocker.get(rule.stage)
            if first is not None:
                self.warn(rule.file, rule.line, f"rule {rule.name!r} is unreachable: rule {first.name!r} "
                                                f"({first.file}:{first.line}) ends every {rule.stage.value} "
                                                "evaluation before it")
                continue
            if rule.condition is None and rule.action.terminal and rule.mode is Mode.ENFORCE:
                blocker[rule.stage] = rule
            if rule.mode is Mode.SHADOW and rule.action is Action.CONTINUE:
                self.warn(rule.file, rule.line, f"rule {rule.name!r}: mode shadow does nothing for action continue "
                                                "(continue already only logs and counts)")
