"""acl / acl_mail / acl_rcpt: named static lists per stage."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import pytest

from smtpguard.checks.acl import ConnectACLCheck
from smtpguard.checks.acl_mail import MailACLCheck
from smtpguard.checks.acl_rcpt import RecipientACLCheck
from smtpguard.checks.base import CheckContext, CheckEnv
from smtpguard.checks.registry import CheckRegistry
from smtpguard.errors import ConfigError
from smtpguard.facts import Session, Transaction


def make(cls: Any, lists: dict[str, Any]) -> Any:
    return cls(cls.Options.model_validate({"lists": lists}), CheckEnv(hostname="mx.test"))


def ctx(check: Any, ip: str = "192.0.2.1", **tx: Any) -> CheckContext:
    session = Session(id="s1", listener="mx", client_ip=ipaddress.ip_address(ip), client_port=25,
                      helo=tx.pop("helo", None), client_name=tx.pop("rdns", None))
    return CheckContext(stage=check.stage, session=session, transaction=Transaction(id="t", **tx), env=check.env)


async def test_connect_lists(tmp_path: Path) -> None:
    f = tmp_path / "block.txt"
    f.write_text("# bad nets\n203.0.113.0/24\n2001:db8:bad::/48\n")
    check = make(ConnectACLCheck, {"blocked": {"match": "client_ip", "files": [str(f)], "entries": ["198.51.100.7"]},
                                   "dyn": {"match": "client_name", "entries": [".dyn.example"]}})
    assert (await check.run(ctx(check, "203.0.113.9"))).outcomes == {"acl.blocked.match"}
    assert (await check.run(ctx(check, "2001:db8:bad:1::1"))).outcomes == {"acl.blocked.match"}
    assert (await check.run(ctx(check, "198.51.100.7", rdns="h1.dyn.example"))).outcomes == {
        "acl.blocked.match", "acl.dyn.match"}
    assert (await check.run(ctx(check, "192.0.2.1"))).outcomes == frozenset()
    assert check.declared_outcomes() == {"acl.error", "acl.blocked.match", "acl.dyn.match"}


async def test_mail_and_rcpt_lists() -> None:
    mail = make(MailACLCheck, {"vip": {"match": "sender", "entries": ["boss@example.com", "@partner.test"]},
                               "spamdom": {"match": "sender_domain", "entries": ["spam.test"], "subdomains": True}})
    assert (await mail.run(ctx(mail, sender="boss@EXAMPLE.com"))).outcomes == {"acl_mail.vip.match"}
    assert (await mail.run(ctx(mail, sender="x@mx.spam.test"))).outcomes == {"acl_mail.spamdom.match"}
    assert (await mail.run(ctx(mail, sender=""))).outcomes == frozenset()
    rcpt = make(RecipientACLCheck, {"traps": {"match": "recipient", "entries": ["trap@example.test"]}})
    assert (await rcpt.run(ctx(rcpt, recipient="trap@example.test"))).outcomes == {"acl_rcpt.traps.match"}


def test_fact_not_known_at_stage_is_a_config_error() -> None:
    registry = CheckRegistry([ConnectACLCheck])
    with pytest.raises(ConfigError, match="not known at the connect stage"):
        registry.create("acl", {"lists": {"x": {"match": "sender", "entries": ["a@b.test"]}}},
                        CheckEnv(hostname="mx.test"), file="p.yaml", line=1)


def test_bad_entry_names_file_and_line(tmp_path: Path) -> None:
    f = tmp_path / "nets.txt"
    f.write_text("192.0.2.0/24\nnot-a-net\n")
    with pytest.raises(ConfigError, match=f"{f}:2:"):
        make(ConnectACLCheck, {"x": {"match": "client_ip", "files": [str(f)]}})


async def test_hundred_thousand_entries() -> None:
    entries = [f"10.{i >> 8 & 255}.{i & 255}.0/24" for i in range(65536)] + [
        f"172.{16 + (i >> 16)}.{i >> 8 & 255}.{i & 255}" for i in range(34464)]
    check = make(ConnectACLCheck, {"big": {"match": "client_ip", "entries": entries}})
    assert (await check.run(ctx(check, "10.1.2.3"))).outcomes == {"acl.big.match"}
    assert (await check.run(ctx(check, "8.8.8.8"))).outcomes == frozenset()
