"""The `relay` check: local domains, relay networks, @file lists, the unconfigured case."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
from pydantic import ValidationError

from smtpguard.checks.base import CheckContext, CheckEnv
from smtpguard.checks.registry import CheckRegistry
from smtpguard.checks.relay import Options, RelayCheck
from smtpguard.errors import ConfigError
from smtpguard.facts import Session, Transaction
from smtpguard.stage import Stage

ENV = CheckEnv(hostname="mx.example.net")


async def outcome(check: RelayCheck, recipient: str, ip: str = "203.0.113.5") -> str:
    session = Session(id="s", listener="mx", client_ip=ipaddress.ip_address(ip), client_port=1)
    t = Transaction(id="T", sender="a@example.org", recipient=recipient)
    result = await check.run(CheckContext(Stage.RCPT, session, t, ENV))
    assert result.outcomes <= check.declared_outcomes() and len(result.outcomes) == 1
    return next(iter(result.outcomes))


@pytest.mark.parametrize(("recipient", "ip", "expected"), [
    ("bob@example.net", "203.0.113.5", "relay.local"),
    ("bob@EXAMPLE.NET.", "203.0.113.5", "relay.local"),
    ("bob@sub.example.org", "203.0.113.5", "relay.local"),
    ("bob@example.org", "203.0.113.5", "relay.local"),
    ("bob@other.example", "203.0.113.5", "relay.denied"),
    ("bob@notexample.net", "203.0.113.5", "relay.denied"),
    ("bob@sub.example.net", "203.0.113.5", "relay.denied"),
    ("bob@other.example", "10.1.2.3", "relay.relay_client"),
    ("bob@other.example", "::ffff:10.1.2.3", "relay.relay_client"),
    ("postmaster", "203.0.113.5", "relay.local"),
])
async def test_outcomes(recipient: str, ip: str, expected: str) -> None:
    check = RelayCheck(Options(local_domains=["example.net", ".example.org"], relay_networks=["10.0.0.0/8"]), ENV)
    assert await outcome(check, recipient, ip) == expected


async def test_unconfigured_lets_upstream_decide() -> None:
    check = RelayCheck(Options(relay_networks=["10.0.0.0/8"]), ENV)
    assert await outcome(check, "bob@anywhere.example") == "relay.unconfigured"


async def test_lists_from_files_relative_to_policy_dir(tmp_path: Path) -> None:
    (tmp_path / "domains.txt").write_text("# ours\nexample.net\n")
    (tmp_path / "relays.txt").write_text("10.0.0.0/8\n")
    check = CheckRegistry([RelayCheck]).create(
        "relay", {"local_domains": "@domains.txt", "relay_networks": ["@relays.txt", "192.0.2.0/24"]}, ENV,
        file="p.yaml", line=3, policy_dir=tmp_path)
    assert isinstance(check, RelayCheck)
    assert await outcome(check, "x@example.net") == "relay.local"
    assert await outcome(check, "x@other.example", "192.0.2.9") == "relay.relay_client"
    assert await outcome(check, "x@other.example", "10.9.9.9") == "relay.relay_client"


def test_bad_entries_are_located_problems(tmp_path: Path) -> None:
    registry = CheckRegistry([RelayCheck])
    with pytest.raises(ConfigError) as info:
        registry.create("relay", {"relay_networks": ["10.0.0.1/8"]}, ENV, file="p.yaml", line=3,
                        key_lines={"relay_networks": 5}, policy_dir=tmp_path)
    [p] = info.value.problems
    assert p.render().startswith("p.yaml:5: checks.relay.relay_networks: ") and "10.0.0.1/8" in p.message
    with pytest.raises(ConfigError) as info:
        registry.create("relay", {"local_domains": "@missing.txt"}, ENV, file="p.yaml", line=3,
                        key_lines={"local_domains": 4}, policy_dir=tmp_path)
    assert "p.yaml:4: checks.relay.local_domains" in str(info.value) and "missing.txt" in str(info.value)


def test_options_reject_non_lists() -> None:
    with pytest.raises(ValidationError):
        Options(local_domains=5)  # type: ignore[arg-type]
