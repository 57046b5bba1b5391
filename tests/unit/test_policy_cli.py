"""The policy subcommands (check, explain, test) and the shipped policies with their fixtures."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from smtpguard.errors import Problem
from smtpguard.policy import cli
from smtpguard.policy.fixtures import parse_fixture
from smtpguard.policy.lint import lint_policy

REPO = Path(__file__).resolve().parents[2]
POLICIES = REPO / "policies"


def shipped_policies() -> list[Path]:
    return [POLICIES / "default.yaml", *sorted(p for p in (POLICIES / "examples").iterdir() if p.is_dir())]


@pytest.mark.parametrize("policy", shipped_policies(), ids=lambda p: p.name)
def test_shipped_policies_load_without_problems(policy: Path) -> None:
    report = lint_policy(policy if policy.is_dir() else None)
    assert report.problems == [], [p.render() for p in report.problems]
    assert report.loaded is not None and report.loaded.policy.rules


def test_every_shipped_policy_has_fixtures() -> None:
    targets = {parse_fixture(f).policy for f in sorted((POLICIES / "tests").glob("*.yaml"))}
    for policy in shipped_policies():
        assert policy.resolve() in {t.resolve() for t in targets if t is not None}, f"no fixtures for {policy}"


def test_shipped_fixtures_pass(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.cmd_test(POLICIES / "tests", None) == 0
    out = capsys.readouterr().out
    assert " 0 failed" in out and "FAIL" not in out


def test_failing_fixture_prints_a_readable_diff(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fixture = tmp_path / "f.yaml"
    fixture.write_text(f"""policy: {POLICIES / 'default.yaml'}
cases:
  - name: expects the wrong thing
    client_ip: 203.0.113.9
    helo: mail.example.com
    sender: x@example.com
    outcomes: [spf.fail]
    expect:
      mail: "550 5.7.23"
""")
    assert cli.cmd_test(fixture, None) == 1
    out = capsys.readouterr().out
    assert f"FAIL expects the wrong thing ({fixture}:3)" in out
    assert "  - mail: expected 550 5.7.23, got pass" in out
    assert "[x] spf-fail" in out and "would reply 550 5.7.23 SPF validation failed" in out


@pytest.mark.parametrize(("text", "message"), [
    ("policy: x\ncases:\n  - {name: a, clientip: 1.2.3.4}\n", ":3: unknown case key 'clientip'"),
    ("policy: x\ncases:\n  - {name: a, expect: {mail: maybe}}\n", ":3: expectation 'maybe' is not one of"),
    ("policy: x\ncases:\n  - {name: a, expect: {queue: pass}}\n", ":3: unknown stage 'queue' in expect"),
    ("cases: []\n", ":1: cases: is a non-empty list"),
])
def test_malformed_fixture(tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, message: str) -> None:
    fixture = tmp_path / "f.yaml"
    fixture.write_text(text)
    assert cli.cmd_test(fixture, None) == 1
    assert f"{fixture}{message}" in capsys.readouterr().out


def test_unknown_given_outcome_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fixture = tmp_path / "f.yaml"
    fixture.write_text(f"policy: {POLICIES / 'default.yaml'}\ncases:\n  - {{name: a, outcomes: [spf.fial]}}\n")
    assert cli.cmd_test(fixture, None) == 1
    assert "unknown outcome 'spf.fial'" in capsys.readouterr().out


def test_check_reports_errors_and_warnings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "10.yaml").write_text("rules:\n  - {name: a, stage: connect, action: accept}\n"
                                      "  - {name: b, stage: connect, action: reject}\n")
    assert cli.cmd_check(tmp_path, []) == 0
    captured = capsys.readouterr()
    assert f"{tmp_path / '10.yaml'}:3: warning: rule 'b' is unreachable" in captured.err
    assert "ok (version" in captured.out
    (tmp_path / "20.yaml").write_text("rules:\n  - {name: c, stage: mail, action: reject, reply: '450 4.7.1 x'}\n")
    assert cli.cmd_check(tmp_path, []) == 1
    err = capsys.readouterr().err
    assert f"{tmp_path / '20.yaml'}:2: bad reply '450 4.7.1 x': action reject needs a 5xx code" in err
    assert cli.cmd_check(None, [Problem("config.yaml", 3, "bad listener")]) == 1
    assert "config.yaml:3: bad listener" in capsys.readouterr().err


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="smtpguard")
    sub = p.add_subparsers(dest="command")
    cli.add_arguments(sub)
    return p


def test_explain_offline(capsys: pytest.CaptureFixture[str]) -> None:
    args = parser().parse_args([
        "explain", "--policy", str(POLICIES / "examples" / "mx-in-front-of-postfix"), "--offline",
        "--client-ip", "198.51.100.7", "--helo", "mail.example.org", "--from", "alice@example.org",
        "--to", "bob@example.net", "--outcome", "spf.fail", "--hostname", "mx.example.net"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "offline (given outcomes: spf.fail)" in out
    assert "== mail" in out and "check spf            spf.fail" in out
    assert "verdict: reply 550 5.7.23 SPF validation failed for alice@example.org" in out
    assert "== rcpt" not in out  # the session ends at a MAIL refusal


def test_explain_with_message_and_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    msg = tmp_path / "m.eml"
    msg.write_text("From: a@example.org\nSubject: hi\n\nbody\n")
    args = parser().parse_args(["explain", "--offline", "--client-ip", "198.51.100.7", "--helo", "mail.example.org",
                                "--from", "a@example.org", "--to", "b@example.net", "--message", str(msg)])
    assert args.func(args) == 0
    assert "== data" in capsys.readouterr().out
    bad = parser().parse_args(["explain", "--offline", "--client-ip", "not-an-ip"])
    assert bad.func(bad) == 2
    unknown = parser().parse_args(["explain", "--offline", "--client-ip", "192.0.2.1", "--outcome", "spf.nope"])
    assert unknown.func(unknown) == 2
    assert "unknown outcome 'spf.nope'" in capsys.readouterr().err


def test_add_arguments_keeps_an_existing_check() -> None:
    p = argparse.ArgumentParser(prog="smtpguard")
    sub = p.add_subparsers(dest="command")
    own = sub.add_parser("check")
    own.add_argument("--config")
    cli.add_arguments(sub)
    assert p.parse_args(["check", "--config", "x"]).config == "x"
    assert p.parse_args(["test", "policies/tests"]).path == Path("policies/tests")
