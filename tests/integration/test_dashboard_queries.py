"""Every query of grafana/smtpguard.json returns data from a REAL Prometheus scraping smtpguard (issue 6).

A real `smtpguard serve` (a policy with DNS checks -- dnsbl, iprev, helo forward DNS -- against
nsd, and a Redis store for its rate limit) sits in front of its own real Postfix; a real
Prometheus scrapes its /metrics every second. While it scrapes, the same traffic runs twice:
deliveries (one over STARTTLS), an unknown user, a bare LF, an unknown verb, a VRFY refused by
an enforced rule, shadow-rule hits (a DNSBL-listed client via the PROXY protocol, a non-FQDN
HELO), a connection over the per-IP cap, a policy reload that fails and one that succeeds, and
a MAIL while the MTA is down (upstream error). Twice, because a labelled counter whose label
values are open-ended (verbs, rules, checks, DNS types, TLS versions...) is born at its first
increment, so Prometheus first scrapes it at 1 and rate()/increase() cannot see that first
event; the second round gives every series a real increase.

Then every panel, annotation and template-variable query of the dashboard runs (variables
substituted by grafana/queries.py; $instance and $listener pinned to the real values) and must
return a non-empty result that is not only NaN; the failure message lists every query that
does not. Panels that cannot have data in this setup go into ALLOWED_EMPTY with the reason
(none today). The exposition after all that traffic must also pass `promtool check metrics`.
With Chromium installed, PNGs of Prometheus' graph page for three panels are saved in the
test's tmp_path (paths printed; run with -s).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import smtplib
import ssl
import subprocess
import tempfile
import urllib.parse
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from conftest import require_binaries
from realservers import NSD, Postfix, Prometheus, Redis, find_binary, wait_for
from sgproc import Smtpguard
from test_grafana_dashboard import load_queries_module  # grafana/queries.py, loaded by path
from test_proxy_postfix import Raw, open_session

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "grafana" / "smtpguard.json"
ZONES_DIR = ROOT / "tests" / "zones" / "reputation"
LISTENERS = ("mx", "capped", "lb")

# Panel titles whose queries may legitimately return nothing here, with the reason. Every entry
# must say why the traffic of this test cannot produce the series. (Empty: all panels have data.)
ALLOWED_EMPTY: dict[str, str] = {}

POLICY = """
checks:
  command:
    unknown_budget: 5
  helo:
    forward_dns: true
  dnsbl:
    zones:
      bl:
        zone: bl.test
        listed_codes: ["127.0.0.2-127.0.0.11"]
        error_codes: ["127.255.255.0/24"]
        probe_interval: 2
  ratelimit:
    limits:
      per_ip_conn: {count: connections, key: [client_ip], rate: 6000/m, burst: 1000}
rules:
  - name: refuse-vrfy-expn
    stage: command
    if: {outcome: [command.vrfy, command.expn]}
    action: reject
  - name: dnsbl-bl
    stage: connect
    if: {outcome: dnsbl.bl.listed}
    action: reject
    mode: shadow
    reply: "554 5.7.1 Client [{client_ip}] is on a block list"
  - name: connection-rate
    stage: connect
    if: {outcome: ratelimit.per_ip_conn.exceeded}
    action: tempfail
    mode: shadow
    reply: "421 4.7.0 Too many connections"
  - name: no-reverse-dns
    stage: connect
    if: {outcome: [iprev.fail, iprev.none, iprev.temperror]}
    action: score
    points: 1
  - name: helo-not-fqdn
    stage: helo
    if: {outcome: [helo.not_fqdn, helo.no_forward_dns, helo.dns_error]}
    action: reject
    mode: shadow
    reply: "550 5.7.1 Bad HELO"
"""


def unique() -> str:
    return uuid.uuid4().hex[:12]



def dashboard_queries(variables: Mapping[str, str]) -> list[tuple[str, str, str]]:
    """(kind, title, PromQL) for every panel target, annotation and query variable of the dashboard."""
    q = load_queries_module()
    values = {n: ".*" for n in q.template_variables(q.load_dashboard()) if n != "datasource"}
    values.update(variables)
    found = [("panel", title, expr) for title, expr in q.panel_queries(variables=variables)]
    found += [("annotation", n, q.substitute(e, values)) for n, e in q.annotation_queries()]
    found += [("variable", n, q.substitute(e, values)) for n, e in q.variable_queries()]
    return found


# ------------------------------------------------------------------------------ servers
@pytest.fixture
def own_postfix(tmp_workdir: Path) -> Iterator[Postfix]:
    pf = Postfix.start(tmp_workdir / f"pf-dash-{unique()}")  # stopped and restarted by the test
    yield pf
    pf.stop()


@pytest.fixture
def cert(tmp_path: Path) -> tuple[Path, Path]:
    require_binaries("openssl")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
                    "/CN=guard.test", "-keyout", str(tmp_path / "key.pem"), "-out", str(tmp_path / "cert.pem")],
                   check=True, capture_output=True, timeout=60)
    return tmp_path / "cert.pem", tmp_path / "key.pem"


@pytest.fixture
def guard(own_postfix: Postfix, nsd_factory: Callable[[Mapping[str, str]], NSD], redis_server: Redis,
          cert: tuple[Path, Path], tmp_workdir: Path) -> Iterator[Smtpguard]:
    ns = nsd_factory({p.name.removesuffix(".zone"): p.read_text() for p in sorted(ZONES_DIR.glob("*.zone"))})
    root = tmp_workdir / f"sg-dash-{unique()}"
    policy = root / "policy"
    policy.mkdir(parents=True)
    (policy / "10-dashboard.yaml").write_text(POLICY)
    sg = Smtpguard.start(
        root, upstream=f"smtp://127.0.0.1:{own_postfix.port}", policy_dir=policy,
        config={"dns": {"nameservers": [f"127.0.0.1:{ns.port}"], "timeout": 1},
                "store": {"url": redis_server.url}, "policy": {"watch": False}},
        listeners=[{"name": "mx", "tls": {"mode": "starttls", "cert": str(cert[0]), "key": str(cert[1])}},
                   {"name": "capped", "limits": {"max_connections_per_ip": 1}},
                   {"name": "lb", "proxy_protocol": {"enabled": True, "trusted_networks": ["127.0.0.0/8"]}}])
    yield sg
    assert sg.stop() == 0


# ------------------------------------------------------------------------------ traffic
def message(subject: str) -> bytes:
    return f"From: s@client.test\r\nTo: alice@example.test\r\nSubject: {subject}\r\n\r\ndashboard\r\n".encode()


def deliver(raw: Raw, subject: str) -> None:
    assert raw.cmd("MAIL FROM:<s@client.test>")[0] == 250
    assert raw.cmd("RCPT TO:<alice@example.test>")[0] == 250
    assert raw.cmd("DATA")[0] == 354
    raw.send(message(subject) + b".\r\n")
    code, text = raw.reply()
    assert code == 250, text


def generate_traffic(sg: Smtpguard, pf: Postfix, round_no: int) -> None:
    subjects = [unique() for _ in range(4)]
    for subject in subjects[:2]:
        raw = open_session(sg.port)
        deliver(raw, subject)
        assert raw.cmd("QUIT")[0] == 221
        raw.close()

    tls = ssl.create_default_context()
    tls.check_hostname, tls.verify_mode = False, ssl.CERT_NONE
    with smtplib.SMTP("127.0.0.1", sg.port, local_hostname="tls-client.test", timeout=20) as client:
        client.starttls(context=tls)  # -> smtpguard_tls_handshakes_total
        client.sendmail("s@client.test", ["alice@example.test"], message(subjects[2]))

    raw = open_session(sg.port)  # unknown user: Postfix's 550 at RCPT
    assert raw.cmd("MAIL FROM:<s@client.test>")[0] == 250
    assert raw.cmd("RCPT TO:<nobody@example.test>")[0] == 550
    assert raw.cmd("QUIT")[0] == 221
    raw.close()

    raw = open_session(sg.port)  # bare LF (bad_data), unknown verb, VRFY refused by an enforced rule
    assert raw.cmd("MAIL FROM:<s@client.test>")[0] == 250
    assert raw.cmd("RCPT TO:<alice@example.test>")[0] == 250
    assert raw.cmd("DATA")[0] == 354
    raw.send(b"Subject: bare\r\n\r\nbare\nlf\r\n.\r\n")
    assert raw.reply()[0] == 554
    assert raw.cmd("XYZZY")[0] == 500
    assert raw.cmd("VRFY alice")[0] == 502
    assert raw.cmd("QUIT")[0] == 221
    raw.close()

    holder = Raw(sg.ports["capped"])  # over the per-IP cap
    assert holder.reply()[0] == 220
    refused = Raw(sg.ports["capped"])
    assert refused.reply()[0] == 421
    refused.close()
    assert holder.cmd("QUIT")[0] == 221
    holder.close()

    # a DNSBL-listed client and a non-FQDN HELO: both shadow rules hit, the mail flows. bl.test
    # lists both addresses; a new one per round means DNS cache misses (latency samples) again
    client_ip = {1: "192.0.2.10", 2: "192.0.2.20"}[round_no]
    raw = Raw(sg.ports["lb"])
    raw.send(f"PROXY TCP4 {client_ip} 127.0.0.1 40000 25\r\n".encode())
    assert raw.reply()[0] == 220
    assert raw.cmd("EHLO notqualified")[0] == 250
    deliver(raw, subjects[3])
    assert raw.cmd("QUIT")[0] == 221
    raw.close()

    policy = sg.config_path.parent / "policy"
    errors = sg.metric('smtpguard_policy_reloads_total{result="error"}')
    broken = policy / "20-broken.yaml"  # a reload that fails: the old policy is kept
    broken.write_text("rules:\n  - name: broken\n    stage: nowhere\n")
    sg.signal(signal.SIGHUP)
    wait_for(lambda: sg.metric('smtpguard_policy_reloads_total{result="error"}') > errors, what="a failed reload")
    broken.unlink()
    version = sg.metric('smtpguard_policy_last_reload_timestamp_seconds')
    (policy / "30-note.yaml").write_text(f"# traffic round {round_no}: a new policy version\n")
    sg.signal(signal.SIGHUP)  # a reload that succeeds with a new version
    wait_for(lambda: sg.metric('smtpguard_policy_last_reload_timestamp_seconds') > version,
             what="a successful reload")

    pf.stop()  # the MTA is down: 451 4.4.1, an upstream error, a tempfailed transaction
    raw = open_session(sg.port)
    code, text = raw.cmd("MAIL FROM:<s@client.test>")
    assert code == 451 and "4.4.1" in text, text
    assert raw.cmd("QUIT")[0] == 221
    raw.close()
    pf.start_again()
    raw = open_session(sg.port)
    deliver(raw, unique())
    assert raw.cmd("QUIT")[0] == 221
    raw.close()
    for subject in subjects:
        pf.wait_message("alice", subject.encode())


def all_sessions_counted(sg: Smtpguard) -> float:
    """Total connections counted, once no session is open any more (0 while one is)."""
    m = sg.metrics()
    if any(m.get(f'smtpguard_connections_active{{listener="{name}"}}', 0.0) for name in LISTENERS):
        return 0.0
    return sum(v for k, v in m.items() if k.startswith("smtpguard_connections_total{"))


# ------------------------------------------------------------------------------ optional screenshots
SCREENSHOT_PANELS = ("Traffic: transactions by outcome", "Protocol violations by kind",
                     "Upstream replies by verb and class")


def screenshot_graphs(prom: Prometheus, exprs: list[str], out_dir: Path) -> list[Path]:
    """PNGs of Prometheus' classic graph page for `exprs` (headless Chromium); [] without Chromium.

    Never fails the test: the pictures are for a human looking at the run."""
    chromium = find_binary("chromium") or find_binary("chromium-browser")
    if chromium is None:
        return []
    shots = []
    for i, expr in enumerate(exprs):
        path = out_dir / f"prometheus-graph-{i}.png"
        url = f"{prom.url}/classic/graph?" + urllib.parse.urlencode(
            {"g0.expr": expr, "g0.tab": "0", "g0.range_input": "1m"})
        with tempfile.TemporaryDirectory() as profile:
            proc = subprocess.Popen(
                [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={profile}", "--window-size=1280,800", "--virtual-time-budget=8000",
                 f"--screenshot={path}", url],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                start_new_session=True)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                pass
            finally:  # the browser and whatever helpers it left behind: its own process group only
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        if path.exists() and path.stat().st_size > 0:
            shots.append(path)
    return shots


# ------------------------------------------------------------------------------ the test
def describe(result: list[dict[str, Any]]) -> str:
    return json.dumps([{**r.get("metric", {}), "value": r.get("value", ["", ""])[1]} for r in result])[:300]


def test_every_dashboard_query_returns_data(guard: Smtpguard, own_postfix: Postfix,
                                            prometheus_factory: Callable[..., Prometheus], tmp_path: Path) -> None:
    if not DASHBOARD.exists():
        pytest.fail(f"{DASHBOARD} does not exist")
    target = f"127.0.0.1:{guard.metrics_port}"
    prom = prometheus_factory([target], scrape_interval="1s")
    prom.wait_for_target_up()
    prom.wait_query('smtpguard_build_info{job="smtpguard"}')  # at least one scrape stored

    # Two rounds of the same traffic, each followed by a scrape (see the module docstring: the
    # first event of a series born at its first increment is invisible to rate()).
    for round_no in (1, 2):
        generate_traffic(guard, own_postfix, round_no)
        total = wait_for(lambda: all_sessions_counted(guard), what="every session to be counted")
        prom.wait_query(f"sum(smtpguard_connections_total) >= {total}")  # scraped after the round

    variables = {"instance": target, "listener": "|".join(LISTENERS), "__rate_interval": "1m",
                 "__interval": "15s", "__range": "5m"}
    queries = dashboard_queries(variables)
    assert queries, f"no queries found in {DASHBOARD}"
    outcome: dict[int, tuple[str, str]] = {}  # index in queries -> (status, detail)

    def allowed(i: int) -> bool:
        kind, title, _ = queries[i]
        return kind == "panel" and title in ALLOWED_EMPTY

    def run_pending() -> bool:
        for i, (_, _, expr) in enumerate(queries):
            if outcome.get(i, ("",))[0] == "ok":
                continue
            try:
                result = prom.query(expr)
            except Exception as exc:  # a query Prometheus refuses is a failure of its own
                outcome[i] = ("error", str(exc))
                continue
            if not result:
                outcome[i] = ("empty", "")
            elif all(math.isnan(float(r["value"][1])) for r in result if "value" in r):
                outcome[i] = ("nan", describe(result))
            else:
                outcome[i] = ("ok", describe(result))
        return all(st == "ok" or (st == "empty" and allowed(i)) for i, (st, _) in outcome.items())

    with contextlib.suppress(TimeoutError):  # the state is scraped already: polling absorbs jitter only
        wait_for(run_pending, timeout=15, interval=1.0, what="every dashboard query to return data")

    def line(i: int) -> str:
        kind, title, expr = queries[i]
        detail = outcome[i][1]
        return f"{kind} {title!r}: {expr}" + (f"\n    -> {detail}" if detail else "")

    by_title = {title: expr for kind, title, expr in queries if kind == "panel"}
    shots = screenshot_graphs(prom, [by_title[t] for t in SCREENSHOT_PANELS if t in by_title], tmp_path)
    for shot in shots:
        print(f"Prometheus graph screenshot: {shot}")

    empty = [line(i) for i, (st, _) in outcome.items() if st == "empty" and not allowed(i)]
    nan_only = [line(i) for i, (st, _) in outcome.items() if st == "nan"]
    errors = [line(i) for i, (st, _) in outcome.items() if st == "error"]
    print(f"\n{len(queries)} dashboard queries run against Prometheus {prom.url} "
          f"({len(empty)} empty, {len(nan_only)} NaN only, {len(errors)} errors)")
    problems = []
    if errors:
        problems.append("queries Prometheus refused:\n  " + "\n  ".join(errors))
    if empty:
        problems.append("queries that returned no data:\n  " + "\n  ".join(empty))
    if nan_only:
        problems.append("queries that returned only NaN:\n  " + "\n  ".join(nan_only))
    assert not problems, "\n".join(problems)
    unused = set(ALLOWED_EMPTY) - {title for kind, title, _ in queries if kind == "panel"}
    assert not unused, f"ALLOWED_EMPTY names panels the dashboard does not have: {sorted(unused)}"

    # the richest exposition (DNS, DNSBL, store, TLS, checks, policy) passes Prometheus' linter too
    promtool = find_binary("promtool")
    assert promtool is not None
    res = subprocess.run([promtool, "check", "metrics"], input=guard.metrics_text(), capture_output=True,
                         text=True, timeout=60, check=False)
    lint = (res.stdout + res.stderr).strip()
    print(f"promtool check metrics (after the dashboard traffic): exit {res.returncode}, output: {lint or '(none)'}")
    assert res.returncode == 0 and not lint, lint
