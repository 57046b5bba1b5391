"""The loader: every malformed file gives exactly one clear `file:line: message`, never a traceback."""

# ruff: noqa: E501  (the table of malformed files reads best one case per line)

from __future__ import annotations

from pathlib import Path

import pytest
from policy_fakes import env, fake_registry

from smtpguard.errors import ConfigError, Problem
from smtpguard.policy.loader import LoadedPolicy, load_policy
from smtpguard.policy.model import AcceptScope, Action, Mode
from smtpguard.stage import Stage


def load_dir(tmp_path: Path, text: str, name: str = "10-main.yaml") -> LoadedPolicy:
    (tmp_path / name).write_text(text)
    return load_policy(tmp_path, env(), fake_registry())


def problems(tmp_path: Path, text: str) -> list[Problem]:
    with pytest.raises(ConfigError) as info:
        load_dir(tmp_path, text)
    return info.value.problems


BAD: list[tuple[str, str, int, str]] = [
    # (id, file text, line of the problem, words the message must contain)
    ("yaml syntax", "rules:\n  - name: a\n    stage: [connect\n", 4, "YAML syntax error"),
    ("yaml tab", "rules:\n\t- name: a\n", 2, "YAML syntax error"),
    ("not a mapping", "- a\n- b\n", 1, "a policy file is a mapping"),
    ("unknown top key", "rule:\n  - {name: a}\n", 1, "unknown top-level key 'rule'"),
    ("duplicate key", "rules:\n  - name: a\n    name: b\n    stage: connect\n    action: accept\n", 3,
     "duplicate key 'name'"),
    ("rules not a list", "rules:\n  name: a\n", 1, "is a list of rules"),
    ("rule not a mapping", "rules:\n  - just-a-string\n", 2, "a rule is a mapping"),
    ("unknown rule key", "rules:\n  - name: a\n    stage: connect\n    action: accept\n    outcome: spf.fail\n", 5,
     "unknown rule key 'outcome' (conditions go under `if:`)"),
    ("missing action", "rules:\n  - name: a\n    stage: connect\n", 2, "rule has no `action:`"),
    ("bad name", "rules:\n  - {name: 'a b', stage: connect, action: accept}\n", 2, "bad rule name"),
    ("unknown stage", "rules:\n  - name: a\n    stage: connection\n    action: accept\n", 3, "unknown stage 'connection'"),
    ("unknown action", "rules:\n  - name: a\n    stage: connect\n    action: deny\n", 4, "unknown action 'deny'"),
    ("unknown mode", "rules:\n  - name: a\n    stage: connect\n    action: reject\n    mode: dry\n", 5,
     "unknown mode 'dry'"),
    ("bad regex", "rules:\n  - name: a\n    stage: helo\n    action: reject\n    if:\n      helo: {regex: '(['}\n", 6,
     "bad regex '(['"),
    ("bad cidr", "rules:\n  - name: a\n    stage: connect\n    action: reject\n    if:\n      client_ip:\n"
                 "        - 10.0.0.0/8\n        - 10.0.0.1/8\n", 8, "is not a valid IP network"),
    ("bad cidr in list file", "rules:\n  - name: a\n    stage: connect\n    action: reject\n    if: {client_ip: '@bad.txt'}\n",
     5, "bad.txt:2:"),
    ("missing list file", "rules:\n  - name: a\n    stage: connect\n    action: reject\n"
                          "    if: {client_ip: '@nope.txt'}\n", 5, "list file 'nope.txt' not found"),
    ("bad reply syntax", "rules:\n  - name: a\n    stage: connect\n    action: reject\n    reply: 'go away'\n", 5,
     "bad reply"),
    ("code/enhanced mismatch", "rules:\n  - name: a\n    stage: mail\n    action: reject\n    reply: '550 4.7.1 no'\n",
     5, "disagree"),
    ("reject needs 5xx", "rules:\n  - name: a\n    stage: mail\n    action: reject\n    reply: '451 4.7.1 later'\n", 5,
     "action reject needs a 5xx code, not 451"),
    ("tempfail needs 4xx", "rules:\n  - name: a\n    stage: mail\n    action: tempfail\n    reply: '550 5.7.1 x'\n", 5,
     "action tempfail needs a 4xx code"),
    ("disconnect needs 421", "rules:\n  - name: a\n    stage: mail\n    action: disconnect\n    reply: '451 4.7.1 x'\n",
     5, "action disconnect needs 421"),
    ("no enhanced code", "rules:\n  - name: a\n    stage: mail\n    action: reject\n    reply: '550 no'\n", 5,
     "has no enhanced status code"),
    ("reply on non-replying action", "rules:\n  - name: a\n    stage: mail\n    action: continue\n    reply: '550 5.7.1 x'\n",
     5, "`reply:` does not apply to action continue"),
    ("unknown template field", "rules:\n  - name: a\n    stage: mail\n    action: reject\n    reply: '550 5.7.1 {ip}'\n", 5,
     "unknown template field {ip}"),
    ("template format spec", "rules:\n  - name: a\n    stage: mail\n    action: reject\n"
                             "    reply: '550 5.7.1 {helo!r}'\n", 5, "format spec or conversion"),
    ("unknown check", "rules:\n  - name: a\n    stage: mail\n    action: reject\n    if: {outcome: spff.fail}\n", 5,
     "unknown check 'spff'"),
    ("unknown outcome", "rules:\n  - name: a\n    stage: mail\n    action: reject\n    if:\n      outcome: [spf.fail, spf.hard]\n",
     6, "unknown outcome 'spf.hard'"),
    ("outcome without check", "rules:\n  - name: a\n    stage: mail\n    action: reject\n    if: {outcome: fail}\n", 5,
     "must be spelled <check>.<outcome>"),
    ("outcome too early", "rules:\n  - name: a\n    stage: connect\n    action: reject\n    if: {outcome: spf.fail}\n", 5,
     "cannot be tested at the connect stage"),
    ("recipient check at data", "rules:\n  - name: a\n    stage: data\n    action: reject\n"
                                "    if: {outcome: grey.greylisted}\n", 5, "is per recipient"),
    ("fact too early", "rules:\n  - name: a\n    stage: connect\n    action: reject\n    if: {sender: a@b.example}\n", 5,
     "`sender` is not known at the connect stage"),
    ("two keys in a condition", "rules:\n  - name: a\n    stage: helo\n    action: reject\n    if:\n"
                                "      helo: x\n      tls: true\n", 6, "a condition has exactly one key"),
    ("unknown condition", "rules:\n  - name: a\n    stage: helo\n    action: reject\n    if: {hello: x}\n", 5,
     "unknown condition 'hello'"),
    ("bad comparison", "rules:\n  - name: a\n    stage: data\n    action: reject\n    if: {size: {more: 5}}\n", 5,
     "takes one comparison"),
    ("duplicate rule name", "rules:\n  - {name: a, stage: connect, action: continue}\n"
                            "  - {name: a, stage: helo, action: continue}\n", 3, "duplicate rule name 'a'"),
    ("score needs points", "rules:\n  - name: a\n    stage: connect\n    action: score\n", 2, "needs `points:`"),
    ("points check without outcome", "rules:\n  - name: a\n    stage: connect\n    action: score\n    points: check\n", 5,
     "tests no outcome"),
    ("delay too long", "rules:\n  - name: a\n    stage: connect\n    action: delay\n    seconds: 600\n", 5,
     "at most 60"),
    ("add_header at connect", "rules:\n  - name: a\n    stage: connect\n    action: add_header\n"
                              "    header: {name: X-A, value: b}\n", 4, "add_header needs a message"),
    ("bad header name", "rules:\n  - name: a\n    stage: data\n    action: add_header\n"
                        "    header: {name: 'X A:', value: b}\n", 5, "bad header name"),
    ("transaction scope at helo", "rules:\n  - name: a\n    stage: helo\n    action: accept\n    scope: transaction\n", 5,
     "scope transaction needs a transaction"),
    ("reject at disconnect", "rules:\n  - name: a\n    stage: disconnect\n    action: reject\n", 4,
     "the client is gone"),
    ("unknown check in checks:", "checks:\n  nope: {}\n", 2, "unknown check 'nope'"),
    ("bad check option", "checks:\n  spf:\n    level: many\n", 3, "checks.spf.level"),
    ("unknown check option", "checks:\n  spf:\n    levle: 1\n", 3, "checks.spf.levle: unknown option"),
    ("thresholds bad stage", "thresholds:\n  disconnect: {reject: 5}\n", 2, "not a stage that can reply"),
    ("thresholds tag at connect", "thresholds:\n  connect:\n    tag: 5\n", 3, "tag adds a header"),
    ("thresholds unknown key", "thresholds:\n  data:\n    reject: 5\n    quarantine: 3\n", 4,
     "unknown threshold key 'quarantine'"),
    ("empty condition list", "rules:\n  - name: a\n    stage: helo\n    action: reject\n    if: []\n", 5,
     "empty condition list"),
]


@pytest.mark.parametrize(("text", "line", "words"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_one_clear_problem(tmp_path: Path, text: str, line: int, words: str) -> None:
    (tmp_path / "bad.txt").write_text("10.0.0.0/8\nnot-an-ip\n")
    found = problems(tmp_path, text)
    errors = [p for p in found if p.severity == "error"]
    assert len(errors) == 1, [p.render() for p in found]
    rendered = errors[0].render()
    assert rendered.startswith(f"{tmp_path / '10-main.yaml'}:{line}: "), rendered
    assert words in rendered, rendered
    assert "Traceback" not in rendered


def test_conflicting_check_options_across_files(tmp_path: Path) -> None:
    (tmp_path / "10-a.yaml").write_text("checks:\n  spf:\n    level: 1\n")
    (tmp_path / "20-b.yaml").write_text("checks:\n  spf:\n    level: 2\n")
    with pytest.raises(ConfigError) as info:
        load_policy(tmp_path, env(), fake_registry())
    [p] = info.value.problems
    assert p.render() == (f"{tmp_path / '20-b.yaml'}:2: conflicting options for check 'spf' (also configured at "
                          f"{tmp_path / '10-a.yaml'}:2); configure a check in one file")


def test_identical_check_options_merge(tmp_path: Path) -> None:
    (tmp_path / "10-a.yaml").write_text("checks:\n  spf:\n    level: 1\n")
    (tmp_path / "20-b.yaml").write_text("checks:\n  spf: {level: 1}\n  dkim: {}\n")
    loaded = load_policy(tmp_path, env(), fake_registry())
    assert set(loaded.checks) == {"spf", "dkim"}
    assert loaded.checks["spf"].options.level == 1  # type: ignore[attr-defined]


def test_duplicate_rule_name_across_files(tmp_path: Path) -> None:
    (tmp_path / "10-a.yaml").write_text("rules:\n  - {name: x, stage: connect, action: continue}\n")
    (tmp_path / "20-b.yaml").write_text("rules:\n  - {name: x, stage: helo, action: continue}\n")
    with pytest.raises(ConfigError) as info:
        load_policy(tmp_path, env(), fake_registry())
    [p] = info.value.problems
    assert p.render().startswith(f"{tmp_path / '20-b.yaml'}:2: duplicate rule name 'x' (first defined at "
                                 f"{tmp_path / '10-a.yaml'}:2)")


def test_warnings_do_not_fail(tmp_path: Path) -> None:
    loaded = load_dir(tmp_path, """
rules:
  - {name: allow-all, stage: connect, action: accept}
  - {name: never, stage: connect, action: reject}
  - {name: other-stage, stage: helo, action: continue, mode: shadow}
thresholds:
  data: {reject: 5, tempfail: 5}
""")
    rendered = [w.render() for w in loaded.warnings]
    assert len(rendered) == 3, rendered
    assert f"{tmp_path / '10-main.yaml'}:4: warning: rule 'never' is unreachable: rule 'allow-all'" in rendered[1] or \
        any("rule 'never' is unreachable" in r and ":4: warning:" in r for r in rendered)
    assert any(":5: warning: rule 'other-stage': mode shadow does nothing" in r for r in rendered)
    assert any("tempfail (5) is not below reject (5)" in r for r in rendered)


def test_unreachable_only_after_enforced_unconditional(tmp_path: Path) -> None:
    loaded = load_dir(tmp_path, """
rules:
  - {name: a, stage: connect, action: accept, mode: shadow}
  - {name: b, stage: connect, if: {listener: x}, action: accept}
  - {name: c, stage: connect, action: reject}
""")
    assert loaded.warnings == ()


def test_files_in_name_order_and_hidden_skipped(tmp_path: Path) -> None:
    (tmp_path / "20-b.yml").write_text("rules:\n  - {name: b, stage: connect, action: continue}\n")
    (tmp_path / "10-a.yaml").write_text("rules:\n  - {name: a, stage: connect, action: continue}\n")
    (tmp_path / ".hidden.yaml").write_text("garbage: [\n")
    (tmp_path / "notes.txt").write_text("not a policy\n")
    loaded = load_policy(tmp_path, env(), fake_registry())
    assert [r.name for r in loaded.policy.rules] == ["a", "b"]


def test_rule_fields(tmp_path: Path) -> None:
    loaded = load_dir(tmp_path, """
rules:
  - name: spf
    description: reject SPF failures
    stage: MAIL
    if: {outcome: spf.fail}
    action: reject
    mode: shadow
    reply: "550 5.7.23 SPF fail for {sender}"
  - {name: ok, stage: rcpt, action: accept, scope: session}
""")
    spf, ok = loaded.policy.rules
    assert (spf.stage, spf.action, spf.mode, spf.line, spf.checks) == (Stage.MAIL, Action.REJECT, Mode.SHADOW, 3,
                                                                         frozenset({"spf"}))
    assert spf.reply is not None and (spf.reply.code, spf.reply.enhanced) == (550, "5.7.23")
    assert ok.scope is AcceptScope.SESSION
    assert set(loaded.checks) == {"spf"}  # only what the policy uses (plus checks: entries)


def test_requires_are_instantiated(tmp_path: Path) -> None:
    loaded = load_dir(tmp_path, "rules:\n  - {name: d, stage: data, if: {outcome: dmarc.fail}, action: reject}\n")
    assert set(loaded.checks) == {"dmarc", "spf", "dkim"}


def test_version_is_content_hash(tmp_path: Path) -> None:
    text = "rules:\n  - {name: a, stage: connect, if: {client_ip: '@l.txt'}, action: continue}\n"
    (tmp_path / "l.txt").write_text("192.0.2.0/24\n")
    v1 = load_dir(tmp_path, text).policy.version
    assert v1 == load_dir(tmp_path, text).policy.version
    (tmp_path / "l.txt").write_text("192.0.2.0/25\n")
    assert load_dir(tmp_path, text).policy.version != v1  # list files are part of the version


def test_yaml_12_scalars(tmp_path: Path) -> None:
    loaded = load_dir(tmp_path, "rules:\n  - {name: no, stage: helo, if: {helo: off}, action: continue}\n")
    assert loaded.policy.rules[0].name == "no"


def test_many_problems_reported_together(tmp_path: Path) -> None:
    found = problems(tmp_path, """
rules:
  - {name: a, stage: nowhere, action: continue}
  - {name: b, stage: connect, action: nothing}
""")
    assert [p.line for p in found] == [3, 4]


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_policy(tmp_path / "nope", env(), fake_registry())
    assert "policy directory does not exist" in str(info.value)
