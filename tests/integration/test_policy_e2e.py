"""Policy through the real proxy into a real Postfix (issue 3): command and HELO rules, early
talker, pipelining, shadow mode, hot reload under traffic and a broken file on reload."""

from __future__ import annotations

import signal
import smtplib
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from realservers import Postfix, wait_for
from sgproc import Smtpguard
from test_proxy_postfix import Raw, open_session


def unique() -> str:
    return uuid.uuid4().hex[:12]


@pytest.fixture
def start(postfix: Postfix, tmp_workdir: Path) -> Iterator[Callable[..., Smtpguard]]:
    started: list[Smtpguard] = []

    def run(**kwargs: object) -> Smtpguard:
        sg = Smtpguard.start(tmp_workdir / f"sg-pol-{unique()}", upstream=f"smtp://127.0.0.1:{postfix.port}",
                             **kwargs)  # type: ignore[arg-type]
        started.append(sg)
        return sg

    yield run
    for sg in started:
        assert sg.stop() == 0


def policy(tmp_workdir: Path, files: dict[str, str]) -> Path:
    d = tmp_workdir / f"policy-{unique()}"
    d.mkdir()
    for name, text in files.items():
        (d / name).write_text(text)
    return d


def test_default_policy_vrfy_expn_and_unknown_commands(start: Callable[..., Smtpguard]) -> None:
    sg = start()
    raw = open_session(sg.port)
    code, text = raw.cmd("VRFY alice")
    assert code == 252 and "2.5.2" in text and "alice" not in text.lower()  # reveals nothing
    code, text = raw.cmd("EXPN staff")
    assert code == 502 and "5.5.1" in text
    for i in range(4):
        assert raw.cmd(f"FOO{i}")[0] == 500
    code, text = raw.cmd("FOO5")  # over the default unknown-command budget (5)
    assert code == 421 and "4.7.0" in text
    assert raw.closed()


def test_helo_rule_and_templates(start: Callable[..., Smtpguard], tmp_workdir: Path, postfix: Postfix) -> None:
    d = policy(tmp_workdir, {"10-helo.yaml": """
rules:
  - name: no-bad-helo
    stage: helo
    if: {helo: {glob: "*.bad.example"}}
    action: reject
    reply: "550 5.7.1 HELO {helo} refused for {client_ip}"
"""})
    sg = start(policy_dir=d)
    raw = Raw(sg.port)
    raw.reply()
    code, text = raw.cmd("EHLO host.bad.example")
    assert code == 550 and "HELO host.bad.example refused for 127.0.0.1" in text
    assert raw.cmd("MAIL FROM:<s@client.test>")[0] == 503  # no accepted HELO yet
    assert raw.cmd("EHLO good.example")[0] == 250
    assert raw.cmd("MAIL FROM:<s@client.test>")[0] == 250
    raw.close()


def test_early_talker_is_caught_inline(start: Callable[..., Smtpguard]) -> None:
    sg = start(listeners=[{"name": "mx", "limits": {"greeting_delay": "1s"}}])
    talker = Raw(sg.port)
    talker.send(b"EHLO impatient.test\r\n")  # before any banner
    code, text = talker.reply()  # instead of the banner (RFC 5321 3.1)
    assert code == 554 and "before the greeting" in text
    assert talker.reply()[0] == 503  # its EHLO: bad sequence, the session was refused (RFC 5321 3.1)
    assert talker.cmd("QUIT")[0] == 221
    polite = Raw(sg.port)
    assert polite.reply()[0] == 220  # legitimate clients just wait; nobody is made to reconnect
    assert polite.cmd("EHLO patient.test")[0] == 250
    polite.close()
    assert sg.metric('smtpguard_protocol_violations_total{kind="early_talker",listener="mx"}') == 1


def test_unauthorised_pipelining_left_to_policy(start: Callable[..., Smtpguard]) -> None:
    sg = start(listeners=[{"name": "mx", "forbid_unauth_pipelining": False}])
    raw = Raw(sg.port)
    raw.reply()
    raw.send(b"HELO client.test\r\nMAIL FROM:<s@client.test>\r\n")  # no PIPELINING after HELO
    assert raw.reply()[0] == 250
    code, text = raw.reply()
    assert code == 503 and "5.5.0" in text and "pipelining" in text.lower()
    raw.close()


def test_shadow_rule_logs_and_counts_but_delivers(start: Callable[..., Smtpguard], tmp_workdir: Path,
                                                  postfix: Postfix) -> None:
    d = policy(tmp_workdir, {"10-shadow.yaml": """
rules:
  - name: try-out-sender-block
    stage: mail
    if: {sender: shadow@client.test}
    action: reject
    mode: shadow
    reply: "550 5.7.1 Sender blocked"
"""})
    sg = start(policy_dir=d)
    subject = unique()
    with smtplib.SMTP("127.0.0.1", sg.port, local_hostname="client.test") as client:
        client.sendmail("shadow@client.test", ["alice@example.test"], f"Subject: {subject}\r\n\r\nx\r\n")
    postfix.wait_message("alice", subject.encode())
    series = ('smtpguard_policy_decisions_total{action="reject",mode="shadow",rule="try-out-sender-block",'
              'stage="mail"}')
    assert wait_for(lambda: sg.metric(series) == 1, what="shadow counter")
    assert "shadow rule try-out-sender-block would reject" in sg.log()
    record = next(r for r in sg.decisions() if r["sender"] == "shadow@client.test")
    mail_stage = next(s for s in record["stages"] if s["stage"] == "mail")
    assert mail_stage["rules"][0]["mode"] == "shadow" and record["outcome"] == "delivered"


RULE_V2 = """
rules:
  - name: late-block
    stage: rcpt
    if: {sender: late@client.test}
    action: reject
    reply: "550 5.7.1 Blocked by the new policy"
"""


def test_reload_under_traffic_and_broken_file(start: Callable[..., Smtpguard], tmp_workdir: Path,
                                              postfix: Postfix) -> None:
    d = policy(tmp_workdir, {"10-base.yaml": "rules: []\n"})
    sg = start(policy_dir=d, config={"policy": {"watch": False}})
    version = sg.metrics_text().split('smtpguard_policy_info{version="', 1)[1].split('"', 1)[0]

    # a transaction in flight when the policy changes keeps the version it started with
    busy = open_session(sg.port)
    assert busy.cmd("MAIL FROM:<late@client.test>")[0] == 250
    (d / "20-block.yaml").write_text(RULE_V2)
    sg.signal(signal.SIGHUP)
    wait_for(lambda: f'smtpguard_policy_info{{version="{version}"}}' not in sg.metrics_text(), what="reload")
    assert sg.metric('smtpguard_policy_reloads_total{result="ok"}') >= 1
    assert busy.cmd("RCPT TO:<alice@example.test>")[0] == 250
    assert busy.cmd("DATA")[0] == 354
    subject = unique()
    busy.send(f"Subject: {subject}\r\n\r\nold rules\r\n.\r\n".encode())
    assert busy.reply()[0] == 250
    postfix.wait_message("alice", subject.encode())
    # the next transaction, even on the same connection, gets the new rules
    assert busy.cmd("MAIL FROM:<late@client.test>")[0] == 250
    code, text = busy.cmd("RCPT TO:<alice@example.test>")
    assert code == 550 and "new policy" in text

    # a broken file: the old rules stay, the log names file and line, the failure is counted
    (d / "30-broken.yaml").write_text("rules:\n  - name: bad\n    stage: mail\n    if: {helo: {regex: '('}}\n"
                                      "    action: reject\n")
    sg.signal(signal.SIGHUP)
    wait_for(lambda: sg.metric('smtpguard_policy_reloads_total{result="error"}') >= 1, what="failed reload")
    assert "30-broken.yaml:4" in sg.log()
    assert busy.cmd("RSET")[0] == 250
    assert busy.cmd("MAIL FROM:<late@client.test>")[0] == 250
    assert busy.cmd("RCPT TO:<alice@example.test>")[0] == 550  # still the last good version
    busy.cmd("QUIT")


def test_file_change_reloads_without_a_signal(start: Callable[..., Smtpguard], tmp_workdir: Path) -> None:
    d = policy(tmp_workdir, {"10-base.yaml": "rules: []\n"})
    sg = start(policy_dir=d)
    version = sg.metrics_text().split('smtpguard_policy_info{version="', 1)[1].split('"', 1)[0]
    (d / "20-block.yaml").write_text(RULE_V2)
    wait_for(lambda: f'smtpguard_policy_info{{version="{version}"}}' not in sg.metrics_text(), timeout=30,
             what="watchfiles reload")
    raw = open_session(sg.port)
    raw.cmd("MAIL FROM:<late@client.test>")
    assert raw.cmd("RCPT TO:<alice@example.test>")[0] == 550
    raw.close()
