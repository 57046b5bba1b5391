"""The `smtpguard` command: serve, check, explain, test, version.

Errors a user can cause (bad flags, bad config or policy files, a port in use) are printed as
one clear line (`file:line: message` for files) with exit status 1 or 2 -- never a traceback.
"""

from __future__ import annotations

import argparse
import errno
import logging
import sys
from pathlib import Path
from typing import Any

from smtpguard import __version__
from smtpguard.errors import ConfigError, Problem


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="smtpguard", description="SMTP policy proxy in front of a real MTA.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the proxy")
    serve.add_argument("--config", type=Path, help="YAML config file (env SMTPGUARD_CONFIG)")
    serve.add_argument("--listen", action="append", metavar="HOST:PORT", help="listener address (repeatable)")
    serve.add_argument("--upstream", metavar="URL", help="smtp://HOST:PORT of the real MTA, or maildir:DIR")
    serve.add_argument("--policy", metavar="DIR", help="policy directory (default: the embedded policy)")
    serve.add_argument("--metrics", metavar="HOST:PORT", help="metrics/health listener, or 'off'")
    serve.add_argument("--dns", action="append", metavar="HOST:PORT", help="DNS server (repeatable)")
    serve.add_argument("--store", metavar="URL", help="state store: memory or redis://HOST:PORT/DB")
    serve.add_argument("--hostname", help="our hostname (banner, authserv-id)")
    serve.add_argument("--no-policy", action="store_true", help="run with no rules at all (benchmarks)")

    check = sub.add_parser("check", help="validate the config and policy files")
    check.add_argument("--config", type=Path, help="YAML config file (env SMTPGUARD_CONFIG)")
    check.add_argument("--policy", metavar="DIR", help="policy directory (default: from the config, else embedded)")

    sub.add_parser("version", help="print the version")
    _add_policy_tools(sub)
    return parser


def _add_policy_tools(sub: Any) -> None:
    try:
        from smtpguard.policy import cli as policy_cli
    except ImportError:
        return
    adder = getattr(policy_cli, "add_arguments", None)
    if adder is not None:
        adder(sub)


def _load(args: argparse.Namespace) -> Any:
    import os

    from smtpguard.config import load_config

    path = args.config or (Path(os.environ["SMTPGUARD_CONFIG"]) if os.environ.get("SMTPGUARD_CONFIG") else None)
    flags = {key: getattr(args, key, None) for key in ("listen", "upstream", "policy", "metrics", "store", "dns",
                                                       "hostname")}
    return load_config(path, flags)


def _print_problems(problems: list[Problem]) -> None:
    for problem in problems:
        print(problem.render(), file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    command = args.command or "serve"
    if args.command is None:
        args = parser.parse_args(["serve", *(argv or [])])
    if command == "version":
        print(f"smtpguard {__version__}")
        return 0
    if command == "serve":
        return _serve(args)
    if command == "check":
        return _check(args)
    handler = getattr(args, "func", None)
    if handler is not None:
        return int(handler(args))
    parser.print_help()
    return 2


def _check(args: argparse.Namespace) -> int:
    problems: list[Problem] = []
    config = None
    try:
        config = _load(args)
    except ConfigError as exc:
        problems.extend(exc.problems)
    if config is not None:
        from smtpguard.config import environment_problems

        problems.extend(environment_problems(config))
    try:
        from smtpguard.policy import cli as policy_cli
    except ImportError:
        _print_problems(problems)
        return 1 if problems else 0
    policy_dir = Path(args.policy) if args.policy else (config.policy.dir if config else None)
    return int(policy_cli.cmd_check(policy_dir, problems))


def _serve(args: argparse.Namespace) -> int:
    from smtpguard.log import setup_logging

    try:
        config = _load(args)
    except ConfigError as exc:
        _print_problems(exc.problems)
        return 1
    from smtpguard import metrics

    setup_logging(config.logging.format, config.logging.level, background=True,
                  on_drop=metrics.LOG_LINES_DROPPED.inc)
    log = logging.getLogger("smtpguard")
    gate = None
    if args.no_policy:
        from smtpguard.policy.verdict import NoPolicy

        gate = NoPolicy()
    from smtpguard import app

    try:
        app.run(config, gate)
    except ConfigError as exc:
        _print_problems(exc.problems)
        return 1
    except OSError as exc:  # a port in use, a certificate that does not load, a directory we cannot write
        what = "cannot listen" if exc.errno in (errno.EADDRINUSE, errno.EACCES, errno.EADDRNOTAVAIL) \
            else "cannot start"
        log.error("%s: %s", what, exc)
        return 1
    except KeyboardInterrupt:
        return 0
    return 0
