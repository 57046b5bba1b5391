"""The `protocol` and `command` checks: session facts the proxy sets, as outcomes."""

from __future__ import annotations

import ipaddress

import pytest

from smtpguard.checks.base import CheckContext, CheckEnv, CheckOptions
from smtpguard.checks.command import CommandCheck
from smtpguard.checks.command import Options as CommandOptions
from smtpguard.checks.protocol import ProtocolCheck
from smtpguard.facts import Session
from smtpguard.stage import Stage

ENV = CheckEnv(hostname="mx.example.net")


def session(**facts: object) -> Session:
    s = Session(id="s", listener="mx", client_ip=ipaddress.ip_address("192.0.2.1"), client_port=1)
    for k, v in facts.items():
        setattr(s, k, v)
    return s


@pytest.mark.parametrize(("facts", "stage", "expected"), [
    ({}, Stage.CONNECT, {"clean"}),
    ({"early_talker": True}, Stage.CONNECT, {"early_talker"}),
    ({"pipelining_violation": True, "helo": "x.example"}, Stage.MAIL, {"pipelining"}),
    ({"unknown_commands": 2, "helo": "x.example"}, Stage.DATA, {"unknown_command"}),
    ({}, Stage.MAIL, {"no_helo"}),
    ({"early_talker": True, "pipelining_violation": True}, Stage.HELO, {"early_talker", "pipelining"}),
])
async def test_protocol(facts: dict[str, object], stage: Stage, expected: set[str]) -> None:
    check = ProtocolCheck(CheckOptions(), ENV)
    result = await check.run(CheckContext(stage, session(**facts), None, ENV))
    assert result.outcomes <= check.declared_outcomes()
    assert {o.removeprefix("protocol.") for o in result.outcomes} == expected


@pytest.mark.parametrize(("verb", "unknown", "budget", "expected"), [
    ("VRFY", 0, 5, {"vrfy"}),
    ("vrfy", 0, 5, {"vrfy"}),
    ("EXPN", 0, 5, {"expn"}),
    ("HELP", 0, 5, {"help"}),
    ("ETRN", 0, 5, {"etrn"}),
    ("XYZZY", 1, 5, {"unknown"}),
    ("XYZZY", 6, 5, {"unknown", "budget_exceeded"}),
    ("XYZZY", 5, 5, {"unknown", "budget_exceeded"}),
    ("XYZZY", 4, 5, {"unknown"}),
    ("GET", 1, 1, {"unknown", "budget_exceeded"}),
    ("VRFY", 7, 5, {"vrfy", "budget_exceeded"}),
])
async def test_command(verb: str, unknown: int, budget: int, expected: set[str]) -> None:
    check = CommandCheck(CommandOptions(unknown_budget=budget), ENV)
    s = session(command=verb, unknown_commands=unknown)
    result = await check.run(CheckContext(Stage.COMMAND, s, None, ENV))
    assert result.outcomes <= check.declared_outcomes()
    assert {o.removeprefix("command.") for o in result.outcomes} == expected


def test_checks_are_volatile_and_registered() -> None:
    from smtpguard.checks.registry import CheckRegistry

    registry = CheckRegistry.discover(entry_points=False)
    for name in ("helo", "envelope", "relay", "protocol", "command"):
        assert name in registry, registry.import_errors
    assert getattr(registry.get("protocol"), "volatile", False)
    assert getattr(registry.get("command"), "volatile", False)
    assert not getattr(registry.get("relay"), "volatile", False)
