"""CPU cost of policy evaluation per transaction: the built-in default policy vs an empty policy.

    .venv/bin/python bench/bench_policy.py [--seconds 1.0] [--rounds 5] [--policy DIR]

One "transaction" is a whole session through `PolicyRunner.evaluate`: connect, helo, mail, two
rcpt, data (2 KB message), disconnect -- 7 evaluations. No network: checks run offline
(`smtpguard.policy.offline`): network checks report fixed outcomes, the pure protocol checks
(`helo`, `envelope`, `relay`, `protocol`, `command`) run for real. Metrics, decision records and
logging (at WARNING) stay on, as in production. Scenarios, all measured in the same run:

* `empty`   -- a policy with no rules (the baseline: runner overhead, pinning, records);
* `clean`   -- the default policy, every check answering "all good";
* `suspect` -- the default policy with shadow hits and points at every stage.

Reported: microseconds of CPU (`time.process_time`) per transaction and per evaluation, median
of `--rounds`, and the ratio to the empty baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import sys
import time
from pathlib import Path

from smtpguard.checks.base import CheckEnv
from smtpguard.checks.registry import CheckRegistry
from smtpguard.facts import Message, Session, Transaction
from smtpguard.policy.builtin import builtin_source
from smtpguard.policy.loader import LoadedPolicy, Source, load_policy, load_sources
from smtpguard.policy.offline import offline_policy
from smtpguard.policy.runner import PolicyRunner
from smtpguard.protocol.data import parse_headers
from smtpguard.stage import Stage

RAW = (b"From: alice@example.org\r\nTo: bob@example.net\r\nSubject: benchmark\r\n"
       b"Message-ID: <1@example.org>\r\nDate: Sun, 29 Nov 2026 06:00:00 +0000\r\n\r\n" + b"x" * 70 + b"\r\n") * 1
RAW = RAW + b"y" * (2048 - len(RAW))
CLEAN = ["dnsbl.not_listed", "iprev.pass", "spf.pass", "greylist.passed", "dkim.pass", "dmarc.pass", "arc.none",
         "ratelimit.per_ip_conn.ok"]
SUSPECT = ["dnsbl.listed", "dnsbl.zen.listed", "iprev.none", "spf.fail", "greylist.new", "dkim.fail", "dmarc.fail",
           "dmarc.fail_reject", "arc.none", "ratelimit.per_ip_conn.ok"]


async def one_transaction(runner: PolicyRunner, n: int, helo: str) -> None:
    import ipaddress

    s = Session(id=f"s{n}", listener="mx", client_ip=ipaddress.ip_address("198.51.100.7"), client_port=4000)
    await runner.evaluate(Stage.CONNECT, s, None)
    s.helo, s.esmtp = helo, True
    await runner.evaluate(Stage.HELO, s, None)
    t = Transaction(id=f"t{n}", sender="alice@example.org")
    s.transaction = t
    await runner.evaluate(Stage.MAIL, s, t)
    for rcpt in ("bob@example.net", "carol@example.net"):
        t.recipient = rcpt
        await runner.evaluate(Stage.RCPT, s, t)
        t.recipients.append(rcpt)
    t.recipient = None
    t.message = Message(RAW, parse_headers(RAW))
    await runner.evaluate(Stage.DATA, s, t)
    await runner.evaluate(Stage.DISCONNECT, s, t)


async def measure(runner: PolicyRunner, seconds: float, helo: str) -> float:
    """CPU microseconds per transaction over at least `seconds` of CPU."""
    for i in range(200):  # warm-up
        await one_transaction(runner, i, helo)
    n = 0
    start = time.process_time()
    while True:
        for _ in range(100):
            await one_transaction(runner, n, helo)
            n += 1
        used = time.process_time() - start
        if used >= seconds:
            return used / n * 1e6


def build(policy_dir: Path | None, env: CheckEnv, registry: CheckRegistry) -> LoadedPolicy:
    if policy_dir is not None:
        return load_policy(policy_dir, env, registry)
    return load_sources([builtin_source("default")], env, registry)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="CPU seconds per measurement")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--policy", type=Path, help="policy directory (default: the built-in default policy)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    env = CheckEnv(hostname="mx.example.net", local_addresses=frozenset({"192.0.2.25"}))
    registry = CheckRegistry.discover(entry_points=False)
    loaded = build(args.policy, env, registry)
    empty = load_sources([Source("empty.yaml", "", None)], env, registry)
    scenarios = {
        "empty": (PolicyRunner.from_loaded(empty, env), "mail.example.org"),
        "clean": (PolicyRunner.from_loaded(offline_policy(loaded, CLEAN), env), "mail.example.org"),
        "suspect": (PolicyRunner.from_loaded(offline_policy(loaded, SUSPECT), env), "198.51.100.7"),
    }
    results: dict[str, list[float]] = {name: [] for name in scenarios}
    for _ in range(args.rounds):  # interleaved so drift hits every scenario alike
        for name, (runner, helo) in scenarios.items():
            results[name].append(asyncio.run(measure(runner, args.seconds, helo)))
    base = statistics.median(results["empty"])
    print(f"policy: {args.policy or 'built-in default'} (version {loaded.policy.version}, "
          f"{len(loaded.policy.rules)} rules); python {sys.version.split()[0]}; {args.rounds} rounds")
    print(f"{'scenario':<10} {'us/transaction':>15} {'(min-max)':>17} {'us/evaluation':>14} {'x empty':>8}")
    for name, values in results.items():
        med = statistics.median(values)
        print(f"{name:<10} {med:>15.1f} {f'({min(values):.0f}-{max(values):.0f})':>17} {med / 7:>14.1f} "
              f"{med / base:>8.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
