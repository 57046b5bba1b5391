"""`smtpguard check` for the policy: load it exactly as the proxy would and collect problems.

Invariant: the same loader and registry as `serve`, so "check passes" means "serve loads it";
problems come back as `Problem`s (errors and warnings), never as exceptions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from smtpguard.checks.base import CheckEnv
from smtpguard.checks.registry import CheckRegistry
from smtpguard.errors import ConfigError, Problem
from smtpguard.policy.builtin import builtin_source
from smtpguard.policy.loader import LoadedPolicy, Source, load_policy


@dataclass(slots=True)
class LintReport:
    problems: list[Problem] = field(default_factory=list)
    loaded: LoadedPolicy | None = None

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity != "warning"]


def lint_policy(policy_dir: Path | None, *, builtin: str | None = "default", env: CheckEnv | None = None,
                registry: CheckRegistry | None = None) -> LintReport:
    """Load `policy_dir` (or the built-in policy when None); problems instead of exceptions."""
    env = env or CheckEnv(hostname="localhost")
    registry = registry if registry is not None else CheckRegistry.discover()
    report = LintReport()
    try:
        extra: list[Source] = []
        if policy_dir is None and builtin:
            extra.append(builtin_source(builtin))
        report.loaded = load_policy(policy_dir, env, registry, extra)
        report.problems.extend(report.loaded.warnings)
    except ConfigError as exc:
        report.problems.extend(exc.problems)
    return report
