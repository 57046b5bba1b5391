"""PolicyRunner: lazy cached checks, requires, errors, pinning, accept scopes, scores, metrics."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from policy_fakes import reset_script, runner_for, session, transaction, write_policy

from smtpguard import metrics
from smtpguard.checks.base import CheckResult
from smtpguard.policy import runner as runner_module
from smtpguard.policy.runner import PolicyRunner, TransactionPin
from smtpguard.stage import Stage


@pytest.fixture(autouse=True)
def script():  # type: ignore[no-untyped-def]
    return reset_script()


def sample(name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


async def test_connection_scope_runs_once_and_is_cached(tmp_path: Path, script) -> None:  # type: ignore[no-untyped-def]
    r = runner_for(tmp_path, """
rules:
  - {name: a, stage: connect, if: {outcome: dnsbl.listed}, action: continue}
  - {name: b, stage: helo, if: {outcome: dnsbl.listed}, action: continue}
  - {name: c, stage: mail, if: {outcome: dnsbl.listed}, action: continue}
""")
    s = session()
    await r.evaluate(Stage.CONNECT, s, None)
    await r.evaluate(Stage.HELO, s, None)
    v = await r.evaluate(Stage.MAIL, s, transaction())
    assert script.calls == [("dnsbl", Stage.CONNECT)]
    assert isinstance(s.results["dnsbl"], CheckResult)
    assert v.record["checks"]["dnsbl"]["cached"] is True


async def test_transaction_and_recipient_scopes(tmp_path: Path, script) -> None:  # type: ignore[no-untyped-def]
    script.outcomes["grey"] = ("greylisted",)
    r = runner_for(tmp_path, """
rules:
  - {name: spf, stage: rcpt, if: {outcome: spf.fail}, action: reject}
  - {name: grey, stage: rcpt, if: {outcome: grey.greylisted}, action: tempfail}
""")
    s = session()
    t = transaction(recipient="a@example.net")
    v1 = await r.evaluate(Stage.RCPT, s, t)
    t.recipient = "b@example.net"
    v2 = await r.evaluate(Stage.RCPT, s, t)
    t.recipient = "a@example.net"
    await r.evaluate(Stage.RCPT, s, t)  # cached for a@
    assert [c for c, _ in script.calls] == ["spf", "grey", "grey"]
    assert v1.reply is not None and v2.reply is not None and v1.reply.code == 451
    assert set(t.rcpt_results) == {"a@example.net", "b@example.net"}
    assert "spf" in t.results
    t2 = transaction(tid="T2")
    await r.evaluate(Stage.RCPT, s, t2)
    assert [c for c, _ in script.calls].count("spf") == 2  # a new transaction runs it again


async def test_requires_run_first_and_once(tmp_path: Path, script) -> None:  # type: ignore[no-untyped-def]
    script.outcomes.update(spf=("pass",), dkim=("fail",), dmarc=("fail",))
    r = runner_for(tmp_path, """
rules:
  - {name: d, stage: data, if: {outcome: [dmarc.fail, spf.fail, dkim.pass]}, action: reject}
""")
    v = await r.evaluate(Stage.DATA, session(), transaction())
    assert sorted(c for c, _ in script.calls) == ["dkim", "dmarc", "spf"]
    assert [c for c, _ in script.calls][-1] == "dmarc"
    assert script.seen_requires["dmarc"] == {"spf": frozenset({"spf.pass"}), "dkim": frozenset({"dkim.fail"})}
    assert v.reply is not None and v.reply.code == 550


async def test_exception_becomes_error_outcome(tmp_path: Path, script, caplog) -> None:  # type: ignore[no-untyped-def]
    script.raises.add("dnsbl")
    r = runner_for(tmp_path, """
rules:
  - {name: err, stage: connect, if: {outcome: dnsbl.error}, action: tempfail, reply: "421 4.3.0 try later {txn}"}
""")
    before = sample("smtpguard_check_outcomes_total", check="dnsbl", outcome="dnsbl.error")
    with caplog.at_level(logging.WARNING, logger="smtpguard.policy"):
        v = await r.evaluate(Stage.CONNECT, session(), None)
    assert v.reply is not None and str(v.reply) == "421 4.3.0 try later s1"
    assert v.disconnect  # 421 always closes
    assert "secret detail" not in str(v.reply)
    assert "secret detail" in caplog.text
    assert sample("smtpguard_check_outcomes_total", check="dnsbl", outcome="dnsbl.error") == before + 1
    assert v.record["checks"]["dnsbl"]["outcomes"] == ["dnsbl.error"]


async def test_timeout_becomes_error_outcome(tmp_path: Path, script) -> None:  # type: ignore[no-untyped-def]
    script.hangs.add("slow")
    r = runner_for(tmp_path, """
checks:
  slow: {timeout: 0}
rules:
  - {name: t, stage: connect, if: {outcome: slow.error}, action: reject}
""")
    v = await r.evaluate(Stage.CONNECT, session(), None)
    assert v.reply is not None and v.reply.code == 554
    assert v.record["checks"]["slow"]["error"].startswith("timeout")


async def test_volatile_checks_run_every_time(tmp_path: Path, script) -> None:  # type: ignore[no-untyped-def]
    r = runner_for(tmp_path, "rules:\n  - {name: c, stage: command, if: {outcome: cmd.vrfy}, action: reject}\n")
    s = session()
    for _ in range(3):
        await r.evaluate(Stage.COMMAND, s, None)
    assert [c for c, _ in script.calls] == ["cmd", "cmd", "cmd"]
    assert "cmd" not in s.results


async def test_internal_error_gives_451(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    r = runner_for(tmp_path, "rules:\n  - {name: a, stage: rcpt, action: continue}\n"
                             "  - {name: b, stage: disconnect, action: continue}\n")

    def broken(*a: object, **k: object) -> None:
        raise ZeroDivisionError("bug")

    monkeypatch.setattr(runner_module.Evaluation, "decide", broken)
    v = await r.evaluate(Stage.RCPT, session(), transaction())
    assert v.reply is not None and str(v.reply) == "451 4.3.0 Temporary policy error, please try again later"
    v = await r.evaluate(Stage.DISCONNECT, session(), None)
    assert v.reply is None


async def test_accept_scopes(tmp_path: Path, script) -> None:  # type: ignore[no-untyped-def]
    r = runner_for(tmp_path, """
rules:
  - {name: trusted-sender, stage: mail, if: {sender_domain: trusted.example}, action: accept, scope: transaction}
  - {name: trusted-ip, stage: connect, if: {client_ip: 192.0.2.0/24}, action: accept, scope: session}
  - {name: no-rcpt, stage: rcpt, action: reject}
  - {name: no-data, stage: data, action: reject}
""")
    s = session()
    t = transaction(sender="x@trusted.example")
    v = await r.evaluate(Stage.MAIL, s, t)
    assert v.accepted and t.accepted_by_rule
    assert (await r.evaluate(Stage.RCPT, s, t)).reply is None
    assert (await r.evaluate(Stage.DATA, s, t)).accepted
    t2 = transaction(tid="T2")
    assert (await r.evaluate(Stage.RCPT, s, t2)).reply is not None  # only that transaction
    s2 = session("192.0.2.1", sid="s2")
    await r.evaluate(Stage.CONNECT, s2, None)
    assert s2.accepted_by_rule
    assert (await r.evaluate(Stage.RCPT, s2, transaction(tid="T3"))).reply is None


async def test_score_counts_once_per_transaction_and_headers_accumulate(tmp_path: Path) -> None:
    r = runner_for(tmp_path, """
rules:
  - {name: p, stage: rcpt, action: score, points: 2}
  - {name: h, stage: rcpt, action: add_header, header: {name: X-Seen, value: "{recipient}"}}
  - {name: c, stage: connect, action: score, points: 1}
thresholds:
  data: {reject: 4}
""")
    s = session()
    await r.evaluate(Stage.CONNECT, s, None)
    t = transaction(recipient="a@example.net")
    v1 = await r.evaluate(Stage.RCPT, s, t)
    t.recipient = "b@example.net"
    v2 = await r.evaluate(Stage.RCPT, s, t)
    await r.evaluate(Stage.RCPT, s, t)
    assert (s.score, t.score) == (1.0, 2.0)
    assert v1.headers == (("X-Seen", "a@example.net"),) and v2.headers == (("X-Seen", "b@example.net"),)
    assert t.headers == [("X-Seen", "a@example.net"), ("X-Seen", "b@example.net")]
    assert (await r.evaluate(Stage.DATA, s, t)).reply is None  # 3 < 4
    assert v2.score == 3.0


async def test_shadow_counts_and_logs(tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    r = runner_for(tmp_path, "rules:\n  - {name: sh, stage: connect, action: reject, mode: shadow}\n")
    before = sample("smtpguard_policy_decisions_total", stage="connect", rule="sh", action="reject", mode="shadow")
    with caplog.at_level(logging.INFO, logger="smtpguard.policy"):
        v = await r.evaluate(Stage.CONNECT, session(), None)
    assert v.reply is None and v.hits[0].mode == "shadow" and v.hits[0].reply == "554 5.7.1 Access denied"
    assert sample("smtpguard_policy_decisions_total", stage="connect", rule="sh", action="reject",
                  mode="shadow") == before + 1
    assert "shadow rule sh would reject" in caplog.text


async def test_delay_and_disconnect(tmp_path: Path) -> None:
    r = runner_for(tmp_path, """
rules:
  - {name: tarpit, stage: helo, if: {helo: {regex: '^\\['}}, action: delay, seconds: 5}
  - {name: bye, stage: helo, if: {helo: '[1.2.3.4]'}, action: disconnect, reply: "421 4.7.0 bye"}
""")
    v = await r.evaluate(Stage.HELO, session(helo="[1.2.3.4]"), None)
    assert v.delay == 5 and v.disconnect and str(v.reply) == "421 4.7.0 bye"


async def test_transaction_pins_version(tmp_path: Path) -> None:
    r = runner_for(tmp_path, "rules:\n  - {name: a, stage: rcpt, action: reject, reply: '550 5.7.1 old'}\n")
    s = session()
    t = transaction()
    await r.evaluate(Stage.CONNECT, s, None)
    await r.evaluate(Stage.MAIL, s, t)
    old = r.version
    write_policy(tmp_path, "rules:\n  - {name: a, stage: rcpt, action: reject, reply: '550 5.7.1 new'}\n")
    assert await r.reload()
    assert r.version != old
    assert isinstance(t.policy, TransactionPin) and t.policy.version.version == old
    assert str((await r.evaluate(Stage.RCPT, s, t)).reply) == "550 5.7.1 old"
    t2 = transaction(tid="T2")
    await r.evaluate(Stage.MAIL, s, t2)
    assert str((await r.evaluate(Stage.RCPT, s, t2)).reply) == "550 5.7.1 new"


async def test_connection_stages_pin_at_connect(tmp_path: Path) -> None:
    r = runner_for(tmp_path, "rules:\n  - {name: a, stage: helo, action: reject, reply: '550 5.7.1 old'}\n")
    s = session()
    await r.evaluate(Stage.CONNECT, s, None)
    write_policy(tmp_path, "rules:\n  - {name: a, stage: helo, action: reject, reply: '550 5.7.1 new'}\n")
    assert await r.reload()
    assert str((await r.evaluate(Stage.HELO, s, None)).reply) == "550 5.7.1 old"
    assert str((await r.evaluate(Stage.HELO, session(sid="s9"), None)).reply) == "550 5.7.1 new"


async def test_retired_version_closed_when_unpinned(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    closed: list[str] = []
    r = runner_for(tmp_path, "rules:\n  - {name: a, stage: connect, if: {outcome: dnsbl.listed}, action: continue}\n")
    check = r.loaded.checks["dnsbl"]

    async def close() -> None:
        closed.append("dnsbl")

    monkeypatch.setattr(check, "close", close, raising=False)
    s = session()
    await r.evaluate(Stage.CONNECT, s, None)
    write_policy(tmp_path, "rules: []\n")
    assert await r.reload()
    assert closed == []  # s still pins it
    await r.observe("connection_closed", s, None)
    await r.close()
    assert closed == ["dnsbl"]


async def test_observe_forwards_events(tmp_path: Path, script) -> None:  # type: ignore[no-untyped-def]
    r = runner_for(tmp_path, "checks:\n  conn: {}\n")
    s = session()
    await r.evaluate(Stage.CONNECT, s, None)
    await r.observe("message_accepted", s, transaction())
    await r.observe("connection_closed", s, None)
    assert script.events == [("conn", "message_accepted"), ("conn", "connection_closed")]
    assert r._sessions == {}


async def test_run_checks(tmp_path: Path, script) -> None:  # type: ignore[no-untyped-def]
    script.outcomes.update(spf=("pass",), dkim=("pass",))
    r = runner_for(tmp_path, "checks:\n  spf: {}\n  dkim: {}\n")
    s, t = session(), transaction()
    got = await r.run_checks(["spf", "dkim", "arc"], Stage.DATA, s, t)
    assert set(got) == {"spf", "dkim"} and got["spf"].outcomes == frozenset({"spf.pass"})
    await r.run_checks(["spf"], Stage.DATA, s, t)
    assert [c for c, _ in script.calls].count("spf") == 1


async def test_decision_record_is_json_able(tmp_path: Path) -> None:
    import json

    r = runner_for(tmp_path, "rules:\n  - {name: a, stage: connect, if: {outcome: dnsbl.listed}, action: reject}\n")
    v = await r.evaluate(Stage.CONNECT, session(), None)
    doc = json.loads(json.dumps(v.record))
    assert doc["stage"] == "connect" and doc["policy"] == r.version
    assert doc["evaluated"] == [{"rule": "a", "matched": False}]
    assert doc["waited_for"] == [{"rule": "a", "checks": ["dnsbl"]}]


async def test_builtin_policy_when_no_directory(tmp_path: Path) -> None:
    from policy_fakes import env

    from smtpguard.checks.registry import CheckRegistry
    from smtpguard.errors import ConfigError

    r = PolicyRunner(None, env(), registry=CheckRegistry(), builtin_policy="no-such-policy")
    with pytest.raises(ConfigError):
        r.load()
    empty = PolicyRunner(None, env(), registry=CheckRegistry())
    empty.load()
    assert empty.rule_count == 0 and (await empty.evaluate(Stage.CONNECT, session(), None)).reply is None
