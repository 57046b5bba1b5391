"""/metrics, /healthz and /readyz of a real `smtpguard serve` in front of a real Postfix (issue 6).

1. A scripted session mix (3 delivered messages, an unknown user, a bare LF, an unknown command,
   a VRFY refused by policy, a connection over the per-IP cap) and the EXACT counter deltas it
   must leave on /metrics -- every series of the counted families, so a double count or a
   series that should not move fails as well as a missing one.
2. The exposition passes `promtool check metrics` (Prometheus' own linter).
3. /readyz follows the upstream (503 naming it once it has been away longer than
   `upstream.ready_grace`, 200 again when it is back); /healthz stays 200 throughout.
4. /readyz does not flap between probes with a short ready_grace, and every label value
   docs/metrics.md lists is exported (at 0) before its first event, so rate() sees that event.
Every wait is on a condition (a counter, a gauge, a decision record), never a fixed sleep.
"""

from __future__ import annotations

import subprocess
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import require_binaries
from prometheus_client.parser import text_string_to_metric_families
from realservers import Postfix, find_binary, wait_for
from sgproc import Smtpguard
from test_proxy_postfix import Raw, open_session

Series = tuple[str, frozenset[tuple[str, str]]]

POLICY = """
checks:
  command:
    unknown_budget: 5
rules:
  - name: refuse-vrfy-expn
    stage: command
    if: {outcome: [command.vrfy, command.expn]}
    action: reject
"""

# the families whose every series' delta is compared with the expectation (counters and
# histogram counts; sums and latencies are checked separately or not at all)
COUNTED = (
    "smtpguard_connections_total",
    "smtpguard_commands_total",
    "smtpguard_messages_total",
    "smtpguard_protocol_violations_total",
    "smtpguard_upstream_replies_total",
    "smtpguard_upstream_errors_total",
    "smtpguard_upstream_connect_duration_seconds_count",
    "smtpguard_message_size_bytes_count",
    "smtpguard_policy_decisions_total",
    "smtpguard_policy_evaluation_seconds_count",
    "smtpguard_check_outcomes_total",
    "smtpguard_tls_handshakes_total",
)


def unique() -> str:
    return uuid.uuid4().hex[:12]


def parse(text: str) -> dict[Series, float]:
    """The exposition as {(sample name, labels): value}; label order does not matter."""
    out: dict[Series, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def s(name: str, **labels: str) -> Series:
    return (name, frozenset(labels.items()))


def show(series: Series) -> str:
    name, labels = series
    return name + "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels)) + "}"


def deltas(before: dict[Series, float], after: dict[Series, float],
           families: tuple[str, ...] = COUNTED) -> dict[Series, float]:
    """Non-zero differences of the series of `families` (a series new in `after` counts from 0)."""
    out = {}
    for key in set(before) | set(after):
        if key[0] in families:
            d = after.get(key, 0.0) - before.get(key, 0.0)
            if d:
                out[key] = d
    return out


def http(port: int, path: str, method: str = "GET") -> tuple[int, str, str]:
    """(status, Content-Type, body) of a request to the metrics listener."""
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method)
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, resp.headers.get("Content-Type", ""), resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type", ""), exc.read().decode()


def quiet(sg: Smtpguard, *listeners: str) -> dict[Series, float]:
    """Wait until no session is open on `listeners` and return that scrape.

    A session's close decrements connections_active and increments connections_total in one
    synchronous step, so 0 open sessions means every admitted session has been counted."""
    def check() -> dict[Series, float] | None:
        now = parse(sg.metrics_text())
        open_ = [now.get(s("smtpguard_connections_active", listener=name), 0.0) for name in listeners]
        return now if not any(open_) else None
    return wait_for(check, what=f"no open sessions on {listeners}")


# ------------------------------------------------------------------------------ the session mix
@dataclass
class Mix:
    sg: Smtpguard
    before: dict[Series, float]
    after: dict[Series, float]
    exposition: str
    message_bytes: int
    bad_txn: str


def deliver(port: int, subject: str) -> bytes:
    """One session: EHLO, MAIL, RCPT, DATA, message, QUIT; returns the message bytes sent."""
    body = f"From: s@client.test\r\nTo: alice@example.test\r\nSubject: {subject}\r\n\r\nmetrics mix\r\n".encode()
    raw = open_session(port)
    assert raw.cmd("MAIL FROM:<s@client.test>")[0] == 250
    assert raw.cmd("RCPT TO:<alice@example.test>")[0] == 250
    assert raw.cmd("DATA")[0] == 354
    raw.send(body + b".\r\n")
    code, text = raw.reply()
    assert code == 250, text
    assert raw.cmd("QUIT")[0] == 221
    raw.close()
    return body


def canonical_size(data: bytes) -> int:
    """What DataFramer.size counts (smtpguard/protocol/data.py): content + CRLF per line, so a
    bare LF counts as a line end of 2 bytes."""
    return sum(len(line.removesuffix(b"\r")) + 2 for line in data.split(b"\n")[:-1])


@pytest.fixture(scope="module")
def mix(postfix: Postfix, tmp_workdir: Path) -> Iterator[Mix]:
    root = tmp_workdir / f"metrics-mix-{unique()}"
    policy = root / "policy"
    policy.mkdir(parents=True)
    (policy / "10-commands.yaml").write_text(POLICY)
    sg = Smtpguard.start(root / "sg", upstream=f"smtp://127.0.0.1:{postfix.port}", policy_dir=policy,
                         config={"policy": {"watch": False}},
                         listeners=[{"name": "mx"}, {"name": "capped", "limits": {"max_connections_per_ip": 1}}])
    try:
        before = quiet(sg, "mx", "capped")  # the readiness probe's session is counted by now
        subjects = [unique() for _ in range(3)]
        sent = [deliver(sg.port, subject) for subject in subjects]

        raw = open_session(sg.port)  # an unknown user: Postfix's own 550 5.1.1 at RCPT
        assert raw.cmd("MAIL FROM:<s@client.test>")[0] == 250
        code, text = raw.cmd("RCPT TO:<nobody@example.test>")
        assert code == 550 and "5.1.1" in text, text
        assert raw.cmd("QUIT")[0] == 221  # the open transaction ends as "aborted"
        raw.close()

        raw = open_session(sg.port)  # a bare LF, then an unknown verb and a VRFY in the same session
        assert raw.cmd("MAIL FROM:<s@client.test>")[0] == 250
        assert raw.cmd("RCPT TO:<alice@example.test>")[0] == 250
        assert raw.cmd("DATA")[0] == 354
        bad = f"Subject: {unique()}\r\n\r\nbare\nlf\r\n".encode()
        raw.send(bad + b".\r\n")
        code, text = raw.reply()
        assert code == 554 and "5.6.0" in text, text
        bad_txn = text.rsplit("[txn ", 1)[1].rstrip("]")
        code, text = raw.cmd("XYZZY")
        assert code == 500 and "5.5.2" in text, text
        code, text = raw.cmd("VRFY alice")
        assert code == 502 and "5.5.1" in text, text  # refused by the policy rule
        assert raw.cmd("QUIT")[0] == 221
        raw.close()

        holder = Raw(sg.ports["capped"])  # max_connections_per_ip: 1 -> the second one is refused
        assert holder.reply()[0] == 220
        refused = Raw(sg.ports["capped"])
        code, text = refused.reply()
        assert code == 421 and "4.7.0" in text, text
        assert refused.closed()
        refused.close()
        assert holder.cmd("QUIT")[0] == 221
        holder.close()

        for subject in subjects:
            postfix.wait_message("alice", subject.encode())
        wait_for(lambda: any(r.get("txn") == bad_txn for r in sg.decisions()),
                 what=f"the decision record of txn {bad_txn}")

        def settled() -> dict[Series, float] | None:  # 7 sessions ended and counted, none open
            now = quiet(sg, "mx", "capped")
            ended = deltas(before, now, ("smtpguard_connections_total",))
            return now if sum(ended.values()) == 7 else None

        after = wait_for(settled, what="all 7 sessions to be counted")
        exposition = sg.metrics_text()
        yield Mix(sg, before, after, exposition, sum(canonical_size(b) for b in [*sent, bad]), bad_txn)
    finally:
        code = sg.stop()
    assert code == 0, f"smtpguard exited with {code}"


def test_session_mix_leaves_exact_counter_deltas(mix: Mix) -> None:
    mx, capped = {"listener": "mx"}, {"listener": "capped"}
    expected: dict[Series, float] = {
        # 3 delivered + unknown user + bare LF session on mx; on capped one served, one over the cap
        s("smtpguard_connections_total", **mx, result="ok"): 5,
        s("smtpguard_connections_total", **capped, result="ok"): 1,
        s("smtpguard_connections_total", **capped, result="refused_ip_cap"): 1,
        # every reply smtpguard sent, by the verb it answered
        s("smtpguard_commands_total", **mx, verb="CONNECT", reply_class="2xx"): 5,
        s("smtpguard_commands_total", **mx, verb="EHLO", reply_class="2xx"): 5,
        s("smtpguard_commands_total", **mx, verb="MAIL", reply_class="2xx"): 5,
        s("smtpguard_commands_total", **mx, verb="RCPT", reply_class="2xx"): 4,
        s("smtpguard_commands_total", **mx, verb="RCPT", reply_class="5xx"): 1,
        s("smtpguard_commands_total", **mx, verb="DATA", reply_class="3xx"): 4,
        s("smtpguard_commands_total", **mx, verb="DATA", reply_class="2xx"): 3,
        s("smtpguard_commands_total", **mx, verb="DATA", reply_class="5xx"): 1,
        s("smtpguard_commands_total", **mx, verb="unknown", reply_class="5xx"): 1,
        s("smtpguard_commands_total", **mx, verb="VRFY", reply_class="5xx"): 1,
        s("smtpguard_commands_total", **mx, verb="QUIT", reply_class="2xx"): 5,
        s("smtpguard_commands_total", **capped, verb="CONNECT", reply_class="2xx"): 1,
        s("smtpguard_commands_total", **capped, verb="CONNECT", reply_class="4xx"): 1,
        s("smtpguard_commands_total", **capped, verb="QUIT", reply_class="2xx"): 1,
        # transactions
        s("smtpguard_messages_total", **mx, outcome="delivered"): 3,
        s("smtpguard_messages_total", **mx, outcome="aborted"): 1,  # unknown user, then QUIT
        s("smtpguard_messages_total", **mx, outcome="bad_data"): 1,
        s("smtpguard_protocol_violations_total", **mx, kind="bare_lf"): 1,
        s("smtpguard_protocol_violations_total", **mx, kind="unknown_command"): 1,
        s("smtpguard_message_size_bytes_count", **mx): 4,  # 3 delivered + the bare-LF one
        # the upstream side: one upstream session per client session that sent MAIL
        s("smtpguard_upstream_connect_duration_seconds_count"): 5,
        s("smtpguard_upstream_replies_total", verb="MAIL", reply_class="2xx"): 5,
        s("smtpguard_upstream_replies_total", verb="RCPT", reply_class="2xx"): 4,
        s("smtpguard_upstream_replies_total", verb="RCPT", reply_class="5xx"): 1,
        s("smtpguard_upstream_replies_total", verb="DATA", reply_class="2xx"): 3,
        s("smtpguard_upstream_replies_total", verb="RSET", reply_class="2xx"): 2,  # QUIT mid-txn, bare LF
        # policy
        s("smtpguard_policy_decisions_total", stage="command", rule="refuse-vrfy-expn", action="reject",
          mode="enforce"): 1,
        s("smtpguard_check_outcomes_total", check="command", outcome="command.vrfy"): 1,
        s("smtpguard_check_outcomes_total", check="command", outcome="command.unknown"): 1,
        # one evaluation per stage reached: 6 admitted sessions, 5 EHLO/MAIL/RCPT, 3 messages that
        # reached the data stage (the bare-LF one is refused before it), XYZZY and VRFY
        s("smtpguard_policy_evaluation_seconds_count", stage="connect"): 6,
        s("smtpguard_policy_evaluation_seconds_count", stage="helo"): 5,
        s("smtpguard_policy_evaluation_seconds_count", stage="mail"): 5,
        s("smtpguard_policy_evaluation_seconds_count", stage="rcpt"): 5,
        s("smtpguard_policy_evaluation_seconds_count", stage="data"): 3,
        s("smtpguard_policy_evaluation_seconds_count", stage="command"): 2,
    }
    got = deltas(mix.before, mix.after)
    wrong = sorted(
        f"{show(k)}: expected +{expected.get(k, 0):g}, got +{got.get(k, 0):g}"
        for k in set(expected) | set(got) if expected.get(k, 0) != got.get(k, 0)
    )
    assert not wrong, "counter deltas differ:\n" + "\n".join(wrong)


def test_message_size_histogram_and_gauges(mix: Mix) -> None:
    before, after = mix.before, mix.after
    size_sum = s("smtpguard_message_size_bytes_sum", listener="mx")
    assert after[size_sum] - before.get(size_sum, 0.0) == mix.message_bytes  # canonical bytes before "."
    small = s("smtpguard_message_size_bytes_bucket", listener="mx", le="1024.0")
    assert after[small] - before.get(small, 0.0) == 4  # every message was under 1 KiB
    for name in ("mx", "capped"):
        assert after[s("smtpguard_connections_active", listener=name)] == 0
        assert after[s("smtpguard_listeners_up", listener=name)] == 1
    assert after[s("smtpguard_upstream_up")] == 1
    assert after[s("smtpguard_data_in_flight_bytes")] == 0
    assert after[s("smtpguard_shutting_down")] == 0
    assert after[s("smtpguard_policy_rules")] == 1
    assert after[s("smtpguard_policy_reloads_total", result="ok")] == 1
    info = [k for k in after if k[0] == "smtpguard_build_info"]
    assert len(info) == 1 and dict(info[0][1]).get("version"), info
    assert any(k[0] == "smtpguard_policy_info" and dict(k[1]).get("version") not in (None, "none") for k in after)
    # the bare-LF transaction is in the decision log with the outcome the counter has
    record = next(r for r in mix.sg.decisions() if r.get("txn") == mix.bad_txn)
    assert record["outcome"] == "bad_data" and record["reply"].startswith("554 ")


def test_labels_never_carry_addresses_or_names(mix: Mix) -> None:
    forbidden = ("127.0.0.1", "example.test", "client.test", "alice", "nobody", "@")
    leaks = sorted({show(k) for k in mix.after for _, v in k[1] if any(f in v for f in forbidden)})
    assert not leaks, leaks


def test_promtool_check_metrics_is_clean(mix: Mix) -> None:
    require_binaries("promtool")
    promtool = find_binary("promtool")
    assert promtool is not None
    res = subprocess.run([promtool, "check", "metrics"], input=mix.exposition, capture_output=True, text=True,
                         timeout=60, check=False)
    output = (res.stdout + res.stderr).strip()
    print(f"promtool check metrics: exit {res.returncode}, output: {output or '(none)'}")
    assert res.returncode == 0 and not output, output


def test_http_endpoints(mix: Mix) -> None:
    port = mix.sg.metrics_port
    status, ctype, body = http(port, "/metrics")
    # prometheus_client's CONTENT_TYPE_LATEST: "text/plain; version=1.0.0; charset=utf-8" with 0.26
    assert status == 200 and ctype.startswith("text/plain; version="), ctype
    assert "# TYPE smtpguard_messages_total counter" in body
    status, _, body = http(port, "/healthz")
    assert (status, body) == (200, "ok\n")
    assert http(port, "/readyz")[0] == 200
    status, _, body = http(port, "/metrics", method="HEAD")
    assert status == 200 and body == ""
    assert http(port, "/nope")[0] == 404
    assert http(port, "/metrics", method="POST")[0] == 405


# The families whose label values docs/metrics.md lists in its "meaning" column, "(a, b, c)":
# every listed value must be exported (at 0) from the start -- a series born at its first
# increment is first scraped at 1, and rate()/increase() (every dashboard panel and alert)
# would never see that first event.
DOCUMENTED_LABELS: dict[str, tuple[str, bool]] = {  # family -> (label, labelled per listener)
    "smtpguard_messages_total": ("outcome", True),
    "smtpguard_connections_total": ("result", True),
    "smtpguard_protocol_violations_total": ("kind", True),
    "smtpguard_upstream_errors_total": ("kind", False),
    "smtpguard_policy_reloads_total": ("result", False),
}
METRICS_MD = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"


def documented_values(family: str) -> list[str]:
    row = next((line for line in METRICS_MD.read_text().splitlines() if line.startswith(f"| `{family}` |")), None)
    assert row is not None, f"{family} is not in {METRICS_MD}"
    meaning = row.rstrip(" |").rsplit("|", 1)[1]
    assert "(" in meaning, f"{family}: no (value, ...) list in {meaning!r}"
    return [v.strip() for v in meaning.rsplit("(", 1)[1].split(")", 1)[0].split(",")]


def test_documented_label_values_are_exported_from_the_start(mix: Mix) -> None:
    missing = []
    for family, (label, per_listener) in DOCUMENTED_LABELS.items():
        values = documented_values(family)
        assert len(values) >= 2, (family, values)
        for value in values:
            key = s(family, listener="mx", **{label: value}) if per_listener else s(family, **{label: value})
            if key not in mix.before:
                missing.append(show(key))
    assert not missing, f"{len(missing)} documented series not exported before their first event: {missing}"


# ------------------------------------------------------------------------------ readiness
@pytest.fixture
def own_postfix(tmp_workdir: Path) -> Iterator[Postfix]:
    # in tmp_workdir (mkdtemp, 0755), not tmp_path: Postfix's users must traverse it, and a
    # concurrent pytest run may reset /tmp/pytest-of-root/ to 0700 under a stopped instance
    pf = Postfix.start(tmp_workdir / f"pf-ready-{unique()}")
    yield pf
    pf.stop()


def test_readyz_follows_the_upstream_and_healthz_stays_up(own_postfix: Postfix, tmp_workdir: Path) -> None:
    with Smtpguard.start(tmp_workdir / f"sg-ready-{unique()}", upstream=f"smtp://127.0.0.1:{own_postfix.port}",
                         no_policy=True, config={"upstream": {"ready_grace": "1s"}}) as sg:
        def ready_is(status: int) -> tuple[int, str] | None:
            assert sg._http("/healthz") == (200, "ok\n")  # liveness never follows the upstream
            got = sg.readyz()
            return got if got[0] == status else None

        assert wait_for(lambda: ready_is(200), timeout=30, interval=0.1, what="/readyz 200") == (200, "ready\n")
        own_postfix.stop()
        raw = open_session(sg.port)  # meanwhile a client gets 451 4.4.1 and it is counted
        code, text = raw.cmd("MAIL FROM:<s@client.test>")
        assert code == 451 and "4.4.1" in text, text
        assert raw.cmd("QUIT")[0] == 221
        raw.close()
        m = parse(sg.metrics_text())
        assert m[s("smtpguard_upstream_errors_total", kind="connect")] == 1
        assert m[s("smtpguard_messages_total", listener="smtp", outcome="upstream_error")] == 1
        assert m[s("smtpguard_upstream_up")] == 0

        _, body = wait_for(lambda: ready_is(503), timeout=30, interval=0.1,
                           what="/readyz to turn 503 with the upstream stopped")
        assert f"upstream smtp://127.0.0.1:{own_postfix.port} unreachable" in body, body
        assert "listeners" not in body and "policy" not in body, body  # only the upstream is the problem

        own_postfix.start_again()
        wait_for(lambda: ready_is(200), timeout=30, interval=0.1,
                 what="/readyz to turn 200 again after the upstream came back")
        assert parse(sg.metrics_text())[s("smtpguard_upstream_up")] == 1


def test_readyz_stays_200_while_the_upstream_is_up(postfix: Postfix, tmp_workdir: Path) -> None:
    # a short grace must not make /readyz flap between probes (smtpguard/app.py probes every
    # ready_grace/3, at most every 10 s); 3 s leaves room for a slow probe on a loaded machine
    grace = 3.0
    with Smtpguard.start(tmp_workdir / f"sg-grace-{unique()}", upstream=f"smtp://127.0.0.1:{postfix.port}",
                         no_policy=True, config={"upstream": {"ready_grace": f"{grace:g}s"}}) as sg:
        observed: list[tuple[int, str]] = []

        def three_graces_sampled() -> bool:
            observed.append(sg.readyz())
            return len(observed) * 0.1 > 3 * grace

        wait_for(three_graces_sampled, timeout=30, interval=0.1, what="/readyz samples over 3 grace periods")
        not_ready = [body for status, body in observed if status != 200]
        assert not not_ready, f"{len(not_ready)}/{len(observed)} samples not ready: {not_ready[0]!r}"


# ------------------------------------------------------------------------------ known gaps
TEMPFAIL_POLICY = """
rules:
  - name: tempfail-everyone
    stage: mail
    if: {client_ip: "127.0.0.0/8"}
    action: tempfail
    reply: "451 4.7.1 Try again later"
"""


def test_policy_tempfail_counts_as_tempfailed(postfix: Postfix, tmp_workdir: Path) -> None:
    root = tmp_workdir / f"sg-tempfail-{unique()}"
    (root / "policy").mkdir(parents=True)
    (root / "policy" / "10-tempfail.yaml").write_text(TEMPFAIL_POLICY)
    with Smtpguard.start(root, upstream=f"smtp://127.0.0.1:{postfix.port}", policy_dir=root / "policy") as sg:
        raw = open_session(sg.port)
        code, text = raw.cmd("MAIL FROM:<s@client.test>")
        assert code == 451 and "4.7.1" in text, text
        txn = text.rsplit("[txn ", 1)[1].rstrip("]")
        assert raw.cmd("QUIT")[0] == 221
        raw.close()
        record = wait_for(lambda: next((r for r in sg.decisions() if r.get("txn") == txn), None),
                          what=f"the decision record of txn {txn}")
        m = parse(sg.metrics_text())
        outcomes = {dict(k[1])["outcome"]: v for k, v in m.items()
                    if k[0] == "smtpguard_messages_total" and v}
        assert (outcomes, record["outcome"]) == ({"tempfailed": 1}, "tempfailed")
        assert (record["reply"] or "").startswith("451 "), record["reply"]


def test_upstream_starttls_missing_counts_as_tls_error(postfix: Postfix, tmp_workdir: Path) -> None:
    # the test Postfix has no certificate, so it does not offer STARTTLS
    with Smtpguard.start(tmp_workdir / f"sg-uptls-{unique()}", upstream=f"smtp://127.0.0.1:{postfix.port}",
                         no_policy=True, config={"upstream": {"starttls": "required"}}) as sg:
        raw = open_session(sg.port)
        code, text = raw.cmd("MAIL FROM:<s@client.test>")
        assert code == 451 and "4.4.1" in text, text
        assert raw.cmd("QUIT")[0] == 221
        raw.close()
        errors = {dict(k[1])["kind"]: v for k, v in parse(sg.metrics_text()).items()
                  if k[0] == "smtpguard_upstream_errors_total" and v}
        assert errors == {"tls": 1}, errors
