"""The pure engine, table-driven: every action, mode, matcher and combination, no I/O.

Each case is (policy rules, stage, facts, check outcomes) -> the reply the client would see
(or None), plus optional expectations on score, headers, delay, hits and checks asked for.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from policy_fakes import env, fake_registry, session, transaction

from smtpguard.checks.base import CheckResult
from smtpguard.facts import Session, Transaction
from smtpguard.policy.conditions import Facts
from smtpguard.policy.engine import Decision, NeedChecks, evaluate_stage
from smtpguard.policy.loader import Source, load_sources
from smtpguard.policy.model import Policy
from smtpguard.stage import Stage

DATA_DIR = Path(__file__).resolve().parent.parent / "data" / "policy"


def load(text: str, base: Path | None = None) -> Policy:
    return load_sources([Source("p.yaml", text, base)], env(), fake_registry()).policy


def result_of(check: str, outcomes: tuple[str, ...], score: float = 0.0, fields: dict[str, str] | None = None
              ) -> CheckResult:
    return CheckResult(frozenset(f"{check}.{o}" for o in outcomes), {}, score, fields or {})


@dataclass
class Run:
    decision: Decision
    asked: list[frozenset[str]] = field(default_factory=list)

    @property
    def reply(self) -> str | None:
        final = self.decision.final
        return str(final.reply) if final is not None and final.reply is not None else None


def run(policy: Policy, stage: Stage, outcomes: dict[str, tuple[str, ...]] | None = None, *,
        s: Session | None = None, t: Transaction | None = None, score: float = 0.0,
        scored: frozenset[str] = frozenset(), scores: dict[str, float] | None = None,
        fields: dict[str, dict[str, str]] | None = None) -> Run:
    """Evaluate like the runner does: answer NeedChecks from `outcomes` (default: `miss`)."""
    outcomes = outcomes or {}
    known: dict[str, CheckResult] = {}
    asked: list[frozenset[str]] = []
    s = s or session()
    facts = Facts(stage, s, t, known.get, score)
    for _ in range(20):
        facts.score = score
        out = evaluate_stage(policy, facts, scored)
        if isinstance(out, Decision):
            return Run(out, asked)
        assert isinstance(out, NeedChecks)
        assert out.names, "NeedChecks must name checks"
        asked.append(out.names)
        for name in out.names:
            assert name not in known, f"{name} asked for twice"
            known[name] = result_of(name, outcomes.get(name, ("miss",)), (scores or {}).get(name, 0.0),
                                    (fields or {}).get(name))
    raise AssertionError("evaluation did not converge")


SPF_REJECT = """
rules:
  - name: spf-fail
    stage: mail
    if: {outcome: spf.fail}
    unless: {client_ip: [192.0.2.0/24]}
    action: reject
"""

CASES: list[tuple[str, str, Stage, dict[str, Any], str | None]] = [
    # (id, rules yaml, stage, kwargs for run(), expected reply)
    ("reject default reply", SPF_REJECT, Stage.MAIL, {"outcomes": {"spf": ("fail",)}}, "550 5.7.1 Sender rejected"),
    ("reject not matching", SPF_REJECT, Stage.MAIL, {"outcomes": {"spf": ("pass",)}}, None),
    ("unless exempts", SPF_REJECT, Stage.MAIL, {"outcomes": {"spf": ("fail",)}, "s": session("192.0.2.9")}, None),
    ("other stage ignored", SPF_REJECT, Stage.RCPT, {"outcomes": {"spf": ("fail",)}}, None),
    ("tempfail", """
rules:
  - {name: grey, stage: rcpt, if: {outcome: grey.greylisted}, action: tempfail}
""", Stage.RCPT, {"outcomes": {"grey": ("greylisted",)}}, "451 4.7.1 Recipient temporarily rejected, try again later"),
    ("disconnect", """
rules:
  - {name: bye, stage: helo, if: {outcome: hello.bare_ip}, action: disconnect}
""", Stage.HELO, {"outcomes": {"hello": ("bare_ip",)}}, "421 4.7.0 Closing connection"),
    ("custom reply with templates", """
rules:
  - name: r
    stage: rcpt
    action: reject
    reply: "550 5.7.1 No mail from {sender} to {recipient} via {helo} [{client_ip}] ({txn})"
""", Stage.RCPT, {"t": transaction()},
     "550 5.7.1 No mail from alice@example.org to bob@example.net via mail.example.org [198.51.100.7] (T1)"),
    ("null sender renders <>", """
rules:
  - {name: r, stage: mail, action: reject, reply: "550 5.7.1 bad {sender}"}
""", Stage.MAIL, {"t": transaction(sender="")}, "550 5.7.1 bad <>"),
    ("check template field", """
rules:
  - {name: r, stage: connect, if: {outcome: dnsbl.listed}, action: reject, reply: "554 5.7.1 listed in {dnsbl.zone}"}
""", Stage.CONNECT, {"outcomes": {"dnsbl": ("listed",)}, "fields": {"dnsbl": {"zone": "zen.example"}}},
     "554 5.7.1 listed in zen.example"),
    ("first terminal wins", """
rules:
  - {name: a, stage: connect, action: reject, reply: "554 5.7.1 first"}
  - {name: b, stage: connect, action: reject, reply: "554 5.7.1 second"}
""", Stage.CONNECT, {}, "554 5.7.1 first"),
    ("accept stops evaluation", """
rules:
  - {name: ok, stage: connect, if: {client_ip: 198.51.100.0/24}, action: accept}
  - {name: no, stage: connect, action: reject}
""", Stage.CONNECT, {}, None),
    ("shadow does not reply, next rule does", """
rules:
  - {name: s, stage: connect, action: reject, mode: shadow, reply: "554 5.7.1 shadow"}
  - {name: e, stage: connect, action: tempfail}
""", Stage.CONNECT, {}, "421 4.7.0 Service temporarily unavailable, try again later"),
    ("continue then reject", """
rules:
  - {name: c, stage: connect, action: continue}
  - {name: r, stage: connect, action: reject}
""", Stage.CONNECT, {}, "554 5.7.1 Access denied"),
    ("command stage default", """
rules:
  - {name: vrfy, stage: command, if: {command: VRFY}, action: reject}
""", Stage.COMMAND, {"s": (lambda s: (setattr(s, "command", "VRFY"), s)[1])(session())},
     "502 5.5.1 Command not permitted"),
]


@pytest.mark.parametrize(("rules", "stage", "kw", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_reply_cases(rules: str, stage: Stage, kw: dict[str, Any], expected: str | None) -> None:
    assert run(load(rules), stage, **kw).reply == expected


# ---------------------------------------------------------------- matchers

def _s(**kw: Any) -> Session:
    s = session()
    for k, v in kw.items():
        setattr(s, k, v)
    return s


MATCHERS: list[tuple[str, Stage, dict[str, Any], bool]] = [
    # (condition yaml, stage, run kwargs, matches?)
    ("{client_ip: 198.51.100.0/24}", Stage.CONNECT, {}, True),
    ("{client_ip: [203.0.113.0/24, '2001:db8::/32']}", Stage.CONNECT, {}, False),
    ("{client_ip: '2001:db8::/32'}", Stage.CONNECT, {"s": session("2001:db8::1")}, True),
    ("{client_ip: 198.51.100.0/24}", Stage.CONNECT, {"s": session("::ffff:198.51.100.7")}, True),
    ("{helo: MAIL.example.org}", Stage.HELO, {}, True),
    ("{helo: {glob: '*.example.org'}}", Stage.HELO, {}, True),
    ("{helo: {glob: ['*.example.com', 'x*']}}", Stage.HELO, {}, False),
    ("{helo: {regex: '^mail\\.'}}", Stage.HELO, {}, True),
    ("{helo: {regex: 'example\\.com$'}}", Stage.HELO, {}, False),
    ("{helo: [a.example, mail.example.org]}", Stage.HELO, {}, True),
    ("{client_name: {present: false}}", Stage.CONNECT, {}, True),
    ("{client_name: {glob: '*.dyn.example'}}", Stage.CONNECT, {"s": _s(client_name="h1.dyn.example")}, True),
    ("{sender: alice@EXAMPLE.org}", Stage.MAIL, {"t": transaction()}, True),
    ("{sender: ''}", Stage.MAIL, {"t": transaction(sender="")}, True),
    ("{null_sender: true}", Stage.MAIL, {"t": transaction(sender="")}, True),
    ("{null_sender: true}", Stage.MAIL, {"t": transaction()}, False),
    ("{sender_domain: example.org}", Stage.MAIL, {"t": transaction()}, True),
    ("{sender_domain: {equals: [a.example, b.example]}}", Stage.MAIL, {"t": transaction()}, False),
    ("{recipient: {regex: '^bob@'}}", Stage.RCPT, {"t": transaction()}, True),
    ("{recipient_domain: EXAMPLE.net}", Stage.RCPT, {"t": transaction()}, True),
    ("{listener: mx}", Stage.CONNECT, {}, True),
    ("{listener: submission}", Stage.CONNECT, {}, False),
    ("{tls: true}", Stage.CONNECT, {"s": session(tls=True)}, True),
    ("{tls: false}", Stage.CONNECT, {"s": session(tls=True)}, False),
    ("{esmtp: false}", Stage.HELO, {}, True),
    ("{size: {gt: 10}}", Stage.DATA, {"t": transaction(message=b"Subject: hi\r\n\r\nbody\r\n")}, True),
    ("{size: {ge: 1M}}", Stage.DATA, {"t": transaction(message=b"Subject: hi\r\n\r\nbody\r\n")}, False),
    ("{size: {lt: '2 kB'}}", Stage.DATA, {"t": transaction(message=b"Subject: hi\r\n\r\nbody\r\n")}, True),
    ("{score: {ge: 5}}", Stage.CONNECT, {"score": 5.0}, True),
    ("{score: {lt: 5}}", Stage.CONNECT, {"score": 5.0}, False),
    ("{header: {name: subject, regex: '^h'}}", Stage.DATA, {"t": transaction(message=b"Subject: hi\r\n\r\nb\r\n")},
     True),
    ("{header: {name: X-Spam, present: true}}", Stage.DATA, {"t": transaction(message=b"Subject: hi\r\n\r\nb\r\n")},
     False),
    ("{header: {name: X-Spam, present: false}}", Stage.DATA, {"t": transaction(message=b"Subject: hi\r\n\r\nb\r\n")},
     True),
    ("{recipients: {ge: 1}}", Stage.RCPT, {"t": transaction()}, False),
    # combinations
    ("{all: [{listener: mx}, {tls: false}]}", Stage.CONNECT, {}, True),
    ("{all: [{listener: mx}, {tls: true}]}", Stage.CONNECT, {}, False),
    ("{any: [{listener: x}, {tls: false}]}", Stage.CONNECT, {}, True),
    ("{any: [{listener: x}, {tls: true}]}", Stage.CONNECT, {}, False),
    ("{not: {listener: x}}", Stage.CONNECT, {}, True),
    ("[{listener: mx}, {not: {tls: true}}]", Stage.CONNECT, {}, True),
    ("{any: [{outcome: dnsbl.listed}, {outcome: conn.hit}]}", Stage.CONNECT, {"outcomes": {"conn": ("hit",)}}, True),
    ("{not: {outcome: dnsbl.listed}}", Stage.CONNECT, {"outcomes": {"dnsbl": ("listed",)}}, False),
    ("{outcome: [dnsbl.zen, dnsbl.listed]}", Stage.CONNECT, {"outcomes": {"dnsbl": ("zen",)}}, True),
]


@pytest.mark.parametrize(("cond", "stage", "kw", "matches"), MATCHERS, ids=[m[0] for m in MATCHERS])
def test_matchers(cond: str, stage: Stage, kw: dict[str, Any], matches: bool) -> None:
    policy = load(f"rules:\n  - name: m\n    stage: {stage.value}\n    if: {cond}\n    action: continue\n")
    got = run(policy, stage, **kw).decision.evaluated
    assert got == (("m", matches),)


def test_list_files(tmp_path: Path) -> None:
    (tmp_path / "trusted.txt").write_text("# trusted relays\n198.51.100.0/24\n")
    (tmp_path / "domains.txt").write_text(".example.org\n")
    (tmp_path / "senders.txt").write_text("@example.org\n")
    policy = load("""
rules:
  - {name: ip, stage: mail, if: {client_ip: "@trusted.txt"}, action: continue}
  - {name: dom, stage: mail, if: {helo: "@domains.txt"}, action: continue}
  - {name: snd, stage: mail, if: {sender: {list: "@senders.txt"}}, action: continue}
  - {name: mixed, stage: mail, if: {sender_domain: [other.example, "@domains.txt"]}, action: continue}
""", tmp_path)
    got = run(policy, Stage.MAIL, t=transaction()).decision.evaluated
    assert got == (("ip", True), ("dom", True), ("snd", True), ("mixed", True))


# ---------------------------------------------------------------- laziness and three-valued logic

def test_lazy_only_needed_checks() -> None:
    policy = load("""
rules:
  - {name: a, stage: connect, if: [{listener: other}, {outcome: dnsbl.listed}], action: reject}
  - {name: b, stage: connect, if: {any: [{listener: mx}, {outcome: conn.hit}]}, action: continue}
""")
    r = run(policy, Stage.CONNECT)
    assert r.asked == []  # decided by facts alone (Kleene logic)


def test_asks_rule_by_rule_and_stops_at_terminal() -> None:
    policy = load("""
rules:
  - {name: a, stage: connect, if: {outcome: dnsbl.listed}, action: reject}
  - {name: b, stage: connect, if: {outcome: conn.hit}, action: reject}
""")
    r = run(policy, Stage.CONNECT, {"dnsbl": ("listed",)})
    assert r.asked == [frozenset({"dnsbl"})]
    assert r.reply == "554 5.7.1 Access denied"
    r = run(policy, Stage.CONNECT, {"dnsbl": ("not_listed",)})
    assert r.asked == [frozenset({"dnsbl"}), frozenset({"conn"})]


def test_unknown_any_asks_all_undecided() -> None:
    policy = load("rules:\n  - {name: a, stage: connect, if: {outcome: [dnsbl.listed, conn.hit]}, action: reject}\n")
    assert run(policy, Stage.CONNECT).asked == [frozenset({"dnsbl", "conn"})]


# ---------------------------------------------------------------- non-terminal actions

def test_score_thresholds_and_tag() -> None:
    policy = load("""
rules:
  - {name: bare, stage: data, if: {outcome: hello.bare_ip}, action: score, points: 3}
  - {name: dkim, stage: data, if: {outcome: dkim.fail}, action: score, points: 8}
thresholds:
  data: {reject: 10, tempfail: 7, tag: 3}
""")
    t = transaction(message=b"Subject: x\r\n\r\n")
    r = run(policy, Stage.DATA, {"hello": ("bare_ip",)}, t=t)
    assert r.reply is None and r.decision.score == 3
    assert r.decision.headers == (("X-Spam-Flag", "YES (score 3)"),)
    r = run(policy, Stage.DATA, {"hello": ("bare_ip",), "dkim": ("fail",)}, t=t)
    assert r.reply == "550 5.7.1 Message rejected" and r.decision.score == 11
    r = run(policy, Stage.DATA, {"dkim": ("fail",)}, t=t)
    assert r.reply == "451 4.7.1 Message temporarily rejected, try again later"
    r = run(policy, Stage.DATA, {"hello": ("bare_ip",)}, t=t, score=7.0)  # earlier stages' points count
    assert r.reply == "550 5.7.1 Message rejected"


def test_score_already_counted_is_not_added_again() -> None:
    policy = load("rules:\n  - {name: p, stage: rcpt, action: score, points: 2}\n")
    r = run(policy, Stage.RCPT, t=transaction(), score=2.0, scored=frozenset({"p"}))
    assert r.decision.points == 0 and r.decision.score == 2 and r.decision.scored == ()


def test_score_points_from_check_and_negative() -> None:
    policy = load("""
rules:
  - {name: bl, stage: connect, if: {outcome: dnsbl.listed}, action: score, points: check}
  - {name: wl, stage: connect, if: {client_ip: 198.51.100.0/24}, action: score, points: -1.5}
  - {name: high, stage: connect, if: {score: {ge: 4}}, action: reject}
""")
    r = run(policy, Stage.CONNECT, {"dnsbl": ("listed",)}, scores={"dnsbl": 6.0})
    assert r.decision.score == 4.5 and r.reply == "554 5.7.1 Access denied"


def test_shadow_score_and_threshold_record_only() -> None:
    policy = load("""
rules:
  - {name: p, stage: data, action: score, points: 20, mode: shadow}
  - {name: q, stage: data, action: score, points: 20}
thresholds:
  data: {reject: 10, mode: shadow}
""")
    r = run(policy, Stage.DATA, t=transaction())
    assert r.reply is None and r.decision.score == 20
    assert [(h.name, h.mode.value) for h in r.decision.hits] == [
        ("p", "shadow"), ("q", "enforce"), ("threshold.data.reject", "shadow")]


def test_add_header_delay_and_cap() -> None:
    policy = load("""
rules:
  - name: h
    stage: rcpt
    action: add_header
    header: {name: X-Checked, value: "helo={helo} ip={client_ip}"}
  - {name: d1, stage: rcpt, action: delay, seconds: 50}
  - {name: d2, stage: rcpt, action: delay, seconds: 50}
""")
    s = session(helo="evil\r\nX-Injected: yes")
    r = run(policy, Stage.RCPT, s=s, t=transaction())
    assert r.decision.headers == (("X-Checked", "helo=evil  X-Injected: yes ip=198.51.100.7"),)
    assert r.decision.delay == 60.0


def test_accept_scope_recorded() -> None:
    policy = load("rules:\n  - {name: a, stage: mail, action: accept, scope: transaction}\n")
    final = run(policy, Stage.MAIL, t=transaction()).decision.final
    assert final is not None and final.scope == "transaction" and final.reply is None


def test_shadow_hit_keeps_would_be_reply() -> None:
    policy = load("rules:\n  - {name: s, stage: connect, action: reject, mode: shadow,"
                  " reply: '554 5.7.1 no {client_ip}'}\n")
    r = run(policy, Stage.CONNECT)
    assert r.reply is None
    hit = r.decision.hits[0]
    assert str(hit.reply) == "554 5.7.1 no 198.51.100.7" and hit.mode.value == "shadow"


def test_template_values_sanitised_and_capped() -> None:
    policy = load("rules:\n  - {name: r, stage: helo, action: reject, reply: '550 5.7.1 bad {helo}'}\n")
    r = run(policy, Stage.HELO, s=session(helo="x\r\n250 OK\x00" + "y" * 500))
    assert r.reply is not None and "\r" not in r.reply and "\n" not in r.reply
    assert len(r.reply) < 140


def test_empty_policy_proceeds() -> None:
    for stage in Stage:
        r = run(load(""), stage, t=transaction())
        assert r.decision.final is None and r.decision.hits == ()
