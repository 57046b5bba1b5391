"""The default-reply table, templates and the YAML source: their stated invariants."""

from __future__ import annotations

import pytest

from smtpguard.errors import ConfigError
from smtpguard.policy.defaults import DEFAULT_REPLIES, INTERNAL_ERROR, REPLY_CLASS, default_reply, reply_class_problem
from smtpguard.policy.templates import TemplateError, check_fields, parse_template
from smtpguard.policy.yamlsource import LineDict, LineList, parse_yaml
from smtpguard.stage import Stage


def test_every_replying_pair_has_one_valid_entry() -> None:
    for stage in Stage:
        for action in REPLY_CLASS:
            if stage is Stage.DISCONNECT:
                assert (stage, action) not in DEFAULT_REPLIES
                continue
            reply = default_reply(stage, action)
            assert reply_class_problem(action, reply.code) is None
            assert reply.enhanced is not None and reply.enhanced[0] == str(reply.code)[0]


def test_disconnect_is_421_and_internal_error_is_451() -> None:
    assert all(r.code == 421 for (_, a), r in DEFAULT_REPLIES.items() if a == "disconnect")
    assert (INTERNAL_ERROR.code, INTERNAL_ERROR.enhanced) == (451, "4.3.0")


def test_reply_class_rules() -> None:
    assert reply_class_problem("reject", 550) is None
    assert reply_class_problem("reject", 451) == "action reject needs a 5xx code, not 451"
    assert reply_class_problem("tempfail", 554) == "action tempfail needs a 4xx code, not 554"
    assert reply_class_problem("disconnect", 450) == "action disconnect needs 421, not 450"


def test_template_parse_and_render() -> None:
    t = parse_template("hi {helo} from {client_ip}, {{literal}} {dnsbl.zone}")
    assert t.fields == ("helo", "client_ip", "dnsbl.zone")
    assert check_fields(t) == ("dnsbl",)
    values = {"helo": "x\r\ny", "client_ip": "{helo}", "dnsbl.zone": None}
    assert t.render(values.get) == "hi x  y from {helo}, {literal} "


@pytest.mark.parametrize("bad", ["{nope}", "{helo:>10}", "{helo!r}", "{", "}", "{0}", "{}"])
def test_template_errors(bad: str) -> None:
    with pytest.raises(TemplateError):
        parse_template(bad)


def test_template_value_cap() -> None:
    t = parse_template("{helo}")
    assert len(t.render(lambda _: "a" * 1000)) == 100


def test_yaml_lines() -> None:
    data = parse_yaml("a: 1\nb:\n  - x\n  - {c: 2}\n", "f.yaml")
    assert isinstance(data, LineDict) and data.key_lines == {"a": 1, "b": 2}
    assert isinstance(data["b"], LineList) and data["b"].item_lines == [3, 4]
    assert data["b"][1].line == 4


@pytest.mark.parametrize(("text", "line", "words"), [
    ("a: [1\n", 2, "YAML syntax error"),
    ("a: 1\na: 2\n", 2, "duplicate key 'a' (first at line 1)"),
    ("a: !!python/object:os.system x\n", 1, "unsupported YAML tag"),
    ("a: &x {b: 1}\nc:\n  <<: *x\n", 3, "merge keys"),
    ("--- a\n--- b\n", 2, "YAML syntax error"),
])
def test_yaml_errors(text: str, line: int, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_yaml(text, "f.yaml")
    [p] = info.value.problems
    assert (p.file, p.line) == ("f.yaml", line) and words in p.message


def test_yaml_empty_is_mapping() -> None:
    assert parse_yaml("", "f") == {} and parse_yaml("# only a comment\n", "f") == {}
