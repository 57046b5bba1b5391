"""The policy subcommands of `smtpguard`: check, explain, test.

`add_arguments(subparsers)` registers them (each sets `func`); `smtpguard.cli` calls it once.
Invariants: every command returns an exit status (0 ok, 1 problems or failures, 2 bad
usage) and prints problems as `file:line: message`, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys
from pathlib import Path
from typing import Any

from smtpguard.checks.base import CheckEnv
from smtpguard.checks.registry import CheckRegistry
from smtpguard.errors import ConfigError, Problem


def _print(line: str) -> None:
    print(line)


def _err(line: str) -> None:
    print(line, file=sys.stderr)


def cmd_check(policy_dir: Path | None, config_problems: list[Problem]) -> int:
    """Print config and policy problems; 1 if any is an error, 0 otherwise (warnings printed)."""
    from smtpguard.policy.lint import lint_policy

    report = lint_policy(policy_dir)
    problems = [*config_problems, *report.problems]
    for p in problems:
        _err(p.render())
    if any(p.severity != "warning" for p in problems):
        return 1
    loaded = report.loaded
    if loaded is not None:
        where = str(policy_dir) if policy_dir is not None else "built-in default policy"
        _print(f"policy {where}: ok (version {loaded.policy.version}, {len(loaded.policy.rules)} rules, "
               f"checks: {', '.join(sorted(loaded.checks)) or 'none'})")
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    """Evaluate one made-up session (offline or live DNS) and print each step."""
    from smtpguard.policy.builtin import builtin_source
    from smtpguard.policy.explain import render_runs
    from smtpguard.policy.loader import Source, load_policy
    from smtpguard.policy.offline import offline_policy, outcome_problems
    from smtpguard.policy.runner import PolicyRunner
    from smtpguard.policy.scenario import Scenario, run_scenario

    policy_dir = Path(args.policy_dir) if getattr(args, "policy_dir", None) else None
    offline = bool(getattr(args, "offline", False))
    outcomes = list(getattr(args, "outcomes", None) or [])
    env = _env(args, offline)
    try:
        extra: list[Source] = [] if policy_dir is not None else [builtin_source("default")]
        loaded = load_policy(policy_dir, env, CheckRegistry.discover(), extra)
    except ConfigError as exc:
        for p in exc.problems:
            _err(p.render())
        return 1
    if outcomes and not offline:
        _err("--outcome needs --offline (live mode asks the checks)")
        return 2
    if offline:
        problems = outcome_problems(outcomes, loaded.checks)
        for msg in problems:
            _err(msg)
        if problems:
            return 2
        loaded = offline_policy(loaded, outcomes)
    message = None
    if getattr(args, "message", None):
        try:
            message = Path(args.message).read_bytes()
        except OSError as exc:
            _err(f"{args.message}: cannot read message: {exc.strerror}")
            return 2
    try:
        sc = Scenario(client_ip=args.client_ip, helo=args.helo, sender=args.sender, rcpts=list(args.rcpt or []),
                      message=message, listener=getattr(args, "listener", None) or "mx",
                      tls=bool(getattr(args, "tls", False)), client_name=getattr(args, "client_name", None))
        runner = PolicyRunner.from_loaded(loaded, env)
        runs = asyncio.run(run_scenario(runner, sc))
    except ValueError as exc:
        _err(f"bad input: {exc}")
        return 2
    mode = f"offline (given outcomes: {', '.join(outcomes) or 'none'})" if offline else "live (DNS queries are made)"
    where = str(policy_dir) if policy_dir is not None else "built-in default policy"
    _print(f"policy {where} (version {loaded.policy.version}, {len(loaded.policy.rules)} rules); {mode}")
    render_runs(runs, loaded.policy, _print)
    return 0


def _env(args: argparse.Namespace, offline: bool) -> CheckEnv:
    hostname = getattr(args, "hostname", None) or socket.getfqdn()
    if offline:
        return CheckEnv(hostname=hostname)
    from smtpguard.dns.resolver import DNSResolver
    from smtpguard.store.factory import create_store

    dns = DNSResolver(nameservers=list(getattr(args, "dns", None) or []) or None)
    return CheckEnv(hostname=hostname, dns=dns, store=create_store("memory"))


def cmd_test(path: Path, policy_dir: Path | None) -> int:
    """Run fixture file(s); 1 when any case fails or a fixture is malformed."""
    from smtpguard.policy.fixtures import fixture_files, run_fixture_file

    if not path.exists():
        _err(f"{path}: no such fixture file or directory")
        return 2
    registry = CheckRegistry.discover()
    total = failed = 0
    for file in fixture_files(path):
        _print(f"# {file}")
        n, f = run_fixture_file(file, policy_dir, registry, _print)
        total, failed = total + n, failed + f
    _print(f"{total} cases, {failed} failed")
    return 1 if failed else 0


def add_arguments(subparsers: Any) -> None:
    """Register `check` (unless the caller already has one), `explain` and `test`."""
    existing = getattr(subparsers, "choices", {}) or {}
    if "check" not in existing:
        check = subparsers.add_parser("check", help="validate the policy files")
        check.add_argument("--policy", dest="policy_dir", metavar="DIR", help="policy directory (default: built-in)")
        check.set_defaults(func=lambda a: cmd_check(Path(a.policy_dir) if a.policy_dir else None, []))

    explain = subparsers.add_parser("explain", help="show how the policy decides one made-up session")
    explain.add_argument("--policy", dest="policy_dir", metavar="DIR", help="policy directory (default: built-in)")
    explain.add_argument("--client-ip", dest="client_ip", required=True, metavar="IP")
    explain.add_argument("--client-name", dest="client_name", metavar="NAME", help="verified rDNS name")
    explain.add_argument("--helo", metavar="NAME")
    explain.add_argument("--sender", "--from", dest="sender", metavar="ADDRESS", help="MAIL FROM ('' = <>)")
    explain.add_argument("--rcpt", "--to", dest="rcpt", action="append", metavar="ADDRESS", help="repeatable")
    explain.add_argument("--message", metavar="FILE", help="message file for the data stage")
    explain.add_argument("--listener", metavar="NAME", default="mx")
    explain.add_argument("--tls", action="store_true", help="the session uses TLS")
    explain.add_argument("--hostname", metavar="NAME", help="our hostname (default: this host's FQDN)")
    explain.add_argument("--offline", action="store_true", help="no network: checks report --outcome values")
    explain.add_argument("--outcome", dest="outcomes", action="append", metavar="CHECK.OUTCOME",
                         help="an outcome to report in offline mode (repeatable)")
    explain.add_argument("--dns", action="append", metavar="HOST:PORT", help="DNS server for live mode (repeatable)")
    explain.set_defaults(func=cmd_explain)

    test = subparsers.add_parser("test", help="run policy fixtures (expected verdicts per stage)")
    test.add_argument("path", type=Path, help="fixture file or directory")
    test.add_argument("--policy", dest="policy_dir", metavar="DIR",
                      help="policy to test (default: each fixture's policy:)")
    test.set_defaults(func=lambda a: cmd_test(a.path, Path(a.policy_dir) if a.policy_dir else None))
