#!/usr/bin/env python3
"""smtpguard vs. the minimal baseline forwarder vs. straight into smtp-sink -- in ONE run.

    .venv/bin/python bench/bench_proxy.py [--rounds 3] [--scale 1.0] [--json out.json]

Starts one ``smtp-sink -c``, then (all on 127.0.0.1, free ports):
  * direct     -- smtp-source straight into the sink (the box's limit),
  * baseline   -- ``../shared/bench/baseline_proxy.py --mode live`` in front of the sink,
  * smtpguard  -- ``python -m smtpguard serve`` with an empty policy dir (see smtpguard_argv()),
and, when asked for with --targets, smtpguard with more policy (the same run, same sink):
  * sg-default -- the embedded default policy (22 rules, SPF/DNSBL/iprev/greylist in shadow),
  * sg-auth    -- SPF, DKIM and DMARC rules enforced (SPF passes, DMARC passes by SPF alignment),
  * sg-limits  -- per-IP connection rate and concurrency limits (memory store, never exceeded),
  the DNS ones answered by a local nsd serving bench.test and 127.0.0.1's PTR,
and measures each at concurrency 1, 10 and 50 (rounds interleaved across targets so drift hits all
alike). Prints msgs/s (median, min-max), ratios to direct and to baseline, and proxy CPU ms per
message; flags ~40 ms per-message stalls (Nagle + delayed ACK) at concurrency 1 (< 25 msgs/s).
A target that fails to start or fails a run is reported and left out; the others still run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import BenchError, Result, Target, format_table, run_once
from realservers import NSD, Daemon, ServerError, SmtpSink, free_port, smtp_ready

REPO = Path(__file__).resolve().parent.parent
BASELINE = REPO / ".." / "shared" / "bench" / "baseline_proxy.py"
DEFAULT_COUNTS = {1: 200, 10: 1000, 50: 2000}
STALL_THRESHOLD = 25.0  # msgs/s at concurrency 1; a 40 ms stall per message caps it near 22


# All load comes from 127.0.0.1: lift the per-IP connection limit (default 20) above the
# highest concurrency, or smtpguard answers 421 4.7.0 at c=50. Everything else stays default.
SMTPGUARD_BENCH_CONFIG = """\
listeners:
  - name: smtp
    limits:
      max_connections_per_ip: 1000
"""


def smtpguard_argv(listen_port: int, sink_port: int, policy_dir: Path | None, metrics_port: int,
                   config: Path, dns: str | None = None) -> list[str]:
    """The smtpguard command line under test: adjust HERE when the CLI changes."""
    return [sys.executable, "-m", "smtpguard", "serve",
            "--config", str(config),
            "--listen", f"127.0.0.1:{listen_port}",
            "--upstream", f"smtp://127.0.0.1:{sink_port}",
            *(["--policy", str(policy_dir)] if policy_dir is not None else []),
            *(["--dns", dns] if dns else []),
            "--metrics", f"127.0.0.1:{metrics_port}"]


BENCH_ZONES = {
    "bench.test": """$ORIGIN bench.test.
$TTL 3600
@       IN SOA ns1.bench.test. hostmaster.bench.test. ( 1 3600 600 86400 3600 )
@       IN NS  ns1.bench.test.
ns1     IN A   127.0.0.1
mx      IN A   127.0.0.1
@       IN TXT "v=spf1 ip4:127.0.0.0/8 -all"
_dmarc  IN TXT "v=DMARC1; p=reject"
""",
    # the default policy asks Spamhaus ZEN (in shadow): serve a local copy listing only the
    # RFC 5782 test point, so its health probe passes and lookups get cacheable NXDOMAINs
    "zen.spamhaus.org": """$ORIGIN zen.spamhaus.org.
$TTL 3600
@          IN SOA ns1.bench.test. hostmaster.bench.test. ( 1 3600 600 86400 3600 )
@          IN NS  ns1.bench.test.
2.0.0.127  IN A   127.0.0.2
""",
    "0.0.127.in-addr.arpa": """$ORIGIN 0.0.127.in-addr.arpa.
$TTL 3600
@       IN SOA ns1.bench.test. hostmaster.bench.test. ( 1 3600 600 86400 3600 )
@       IN NS  ns1.bench.test.
1       IN PTR mx.bench.test.
""",
}
VARIANT_POLICIES = {
    "smtpguard": "",
    "sg-auth": """
rules:
  - {name: spf-fail, stage: mail, if: {outcome: spf.fail}, action: reject, reply: "550 5.7.23 SPF failed"}
  - {name: spf-temperror, stage: mail, if: {outcome: spf.temperror}, action: tempfail,
     reply: "451 4.7.24 SPF error"}
  - {name: dkim-fail, stage: data, if: {outcome: dkim.fail}, action: score, points: 3}
  - {name: dmarc-reject, stage: data, if: {outcome: dmarc.fail_reject}, action: reject,
     reply: "550 5.7.1 DMARC"}
""",
    "sg-limits": """
checks:
  ratelimit:
    limits:
      per_ip_conn: {count: connections, key: [client_ip], rate: 100000/m, burst: 100000}
  concurrency:
    limits:
      per_ip: {key: [client_ip], limit: 1000}
rules:
  - {name: conn-rate, stage: connect, if: {outcome: ratelimit.per_ip_conn.exceeded}, action: tempfail,
     reply: "421 4.7.0 slow down"}
  - {name: conn-concurrency, stage: connect, if: {outcome: concurrency.per_ip.exceeded}, action: tempfail,
     reply: "421 4.7.0 too many"}
""",
}
SMTPGUARD_TARGETS = ("smtpguard", "sg-default", "sg-auth", "sg-limits")


def baseline_argv(listen_port: int, sink_port: int) -> list[str]:
    return [sys.executable, str(BASELINE.resolve()), "--mode", "live",
            "--listen", f"127.0.0.1:{listen_port}", "--upstream", f"127.0.0.1:{sink_port}"]


def start_proxy(name: str, argv: list[str], port: int, workdir: Path) -> Daemon:
    """Start a proxy and wait for its 220 banner (ServerError with its log if it fails)."""
    daemon = Daemon(argv, workdir / f"{name}.log", name, cwd=REPO)
    daemon.wait_ready(lambda: smtp_ready(port), timeout=30, what=f"{name} 220 banner on {port}")
    return daemon


def fmt_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--scale", type=float, default=1.0, help="multiply the per-run message counts")
    ap.add_argument("--concurrency", type=int, nargs="+", default=sorted(DEFAULT_COUNTS))
    ap.add_argument("--targets", nargs="+", default=["direct", "baseline", "smtpguard"],
                    choices=["direct", "baseline", *SMTPGUARD_TARGETS])
    ap.add_argument("--warmup", type=int, default=50, help="unrecorded messages per proxy first")
    ap.add_argument("--sink-xclient", action="store_true",
                    help="let smtp-sink offer XCLIENT (it answers XCLIENT with 250, not 220; "
                         "default: smtp-sink -C, so proxies see no XCLIENT, like the baseline)")
    ap.add_argument("--no-identity", action="store_true",
                    help="smtp-sink offers neither XCLIENT nor XFORWARD (-C -F): smtpguard then passes no "
                         "client identity, like the baseline (default: -C, so smtpguard sends XFORWARD)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--keep-workdir", action="store_true")
    args = ap.parse_args(argv)

    counts = {c: max(20, int(DEFAULT_COUNTS.get(c, 40 * c) * args.scale)) for c in args.concurrency}
    workdir = Path(tempfile.mkdtemp(prefix="smtpguard-bench-"))
    print(f"# bench_proxy {time.strftime('%Y-%m-%d %H:%M:%S %Z')}  host={platform.node()} "
          f"cpus={os.cpu_count()} python={platform.python_version()} rounds={args.rounds} "
          f"counts={counts} sink_xclient={args.sink_xclient} workdir={workdir}", flush=True)

    daemons: list[Daemon] = []
    errors: dict[str, str] = {}
    targets: list[Target] = []
    nsd: NSD | None = None
    sink_args = () if args.sink_xclient else ("-C", "-F") if args.no_identity else ("-C",)
    sink = SmtpSink.start(workdir / "sink", extra_args=sink_args)
    try:
        if "direct" in args.targets:
            targets.append(Target("direct", sink.port))
        if "baseline" in args.targets:
            port = free_port()
            try:
                d = start_proxy("baseline", baseline_argv(port, sink.port), port, workdir)
                daemons.append(d)
                targets.append(Target("baseline", port, d.pid))
            except ServerError as exc:
                errors["baseline"] = str(exc)
        if {"sg-default", "sg-auth"} & set(args.targets):
            nsd = NSD.start(workdir / "nsd", BENCH_ZONES)
        config = workdir / "smtpguard-bench.yaml"
        config.write_text(SMTPGUARD_BENCH_CONFIG)
        for name in SMTPGUARD_TARGETS:
            if name not in args.targets:
                continue
            port = free_port()
            policy: Path | None = None
            if name in VARIANT_POLICIES:
                policy = workdir / f"policy-{name}"
                policy.mkdir()
                if VARIANT_POLICIES[name]:
                    (policy / "bench.yaml").write_text(VARIANT_POLICIES[name])
            dns = f"127.0.0.1:{nsd.port}" if nsd is not None and name in ("sg-default", "sg-auth") else None
            try:
                d = start_proxy(name, smtpguard_argv(port, sink.port, policy, free_port(), config, dns),
                                port, workdir)
                daemons.append(d)
                targets.append(Target(name, port, d.pid))
            except ServerError as exc:
                errors[name] = str(exc)

        for t in list(targets):
            if t.pid is not None and args.warmup:
                try:
                    run_once(t, sink, min(10, args.warmup), args.warmup)
                except BenchError as exc:
                    errors[t.name] = f"warm-up failed: {exc}"
                    targets.remove(t)

        results = {(t.name, c): Result(t.name, c) for t in targets for c in args.concurrency}
        for rnd in range(args.rounds):
            for c in args.concurrency:
                for t in list(targets):
                    try:
                        run = run_once(t, sink, c, counts[c])
                    except BenchError as exc:
                        errors[t.name] = str(exc)
                        targets.remove(t)
                        continue
                    results[(t.name, c)].runs.append(run)
                    cpu = run.cpu_ms_per_msg
                    print(f"round {rnd + 1} {t.name:10} c={c:<3} {run.msgs_per_s:8.1f} msgs/s"
                          + (f"  {cpu:.2f} ms CPU/msg" if cpu is not None else ""), flush=True)
    finally:
        for d in daemons:
            d.stop()
        sink.stop()
        if nsd is not None:
            nsd.stop()

    done = {k: r for k, r in results.items() if r.runs}
    rows = []
    for (name, c), r in sorted(done.items(), key=lambda kv: (kv[0][1], kv[0][0] != "direct",
                                                             kv[0][0] != "baseline")):
        direct = done.get(("direct", c))
        base = done.get(("baseline", c))
        lo, hi = r.spread
        cpu = r.cpu_ms_per_msg
        rows.append((name, str(c), f"{r.msgs_per_s:.1f}", f"{lo:.0f}-{hi:.0f}",
                     fmt_ratio(r.msgs_per_s / direct.msgs_per_s if direct else None),
                     fmt_ratio(r.msgs_per_s / base.msgs_per_s if base else None),
                     "-" if cpu is None else f"{cpu:.2f}", str(len(r.runs))))
    print()
    print(format_table(rows, ("target", "conc", "msgs/s", "min-max", "x direct", "x baseline",
                              "CPU ms/msg", "runs")))
    print()
    for name in ("baseline", *SMTPGUARD_TARGETS):
        r1 = done.get((name, 1))
        if r1 is not None:
            stalled = r1.msgs_per_s < STALL_THRESHOLD
            print(f"{name}: concurrency 1 = {r1.msgs_per_s:.1f} msgs/s -> "
                  + ("~40 ms STALLS per message (Nagle/delayed ACK?)" if stalled else "no 40 ms stalls"))
    for name, err in errors.items():
        print(f"\n{name}: NOT MEASURED: {err}")

    if args.json:
        args.json.write_text(json.dumps({
            "counts": counts, "rounds": args.rounds, "errors": errors,
            "results": [{"target": r.target, "concurrency": r.concurrency,
                         "msgs_per_s": r.msgs_per_s, "cpu_ms_per_msg": r.cpu_ms_per_msg,
                         "runs": [{"count": x.count, "seconds": x.seconds, "cpu_seconds": x.cpu_seconds}
                                  for x in r.runs]} for r in done.values()],
        }, indent=2) + "\n")
    if args.keep_workdir or errors:
        print(f"\nlogs kept in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
