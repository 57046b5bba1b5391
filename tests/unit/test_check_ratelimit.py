"""ratelimit / ratelimit_rcpt / ratelimit_data with MemoryStore and an injected clock."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
from policy_fakes import FakeClock
from pydantic import ValidationError

from smtpguard.checks.base import CheckContext, CheckEnv
from smtpguard.checks.ratelimit import RateLimitCheck
from smtpguard.checks.ratelimit_data import DataRateLimitCheck
from smtpguard.checks.ratelimit_rcpt import RecipientRateLimitCheck
from smtpguard.errors import StoreError
from smtpguard.facts import Message, Session, Transaction
from smtpguard.ratelimits import parse_rate
from smtpguard.store.base import RateDecision
from smtpguard.store.memory import MemoryStore


class BrokenStore(MemoryStore):
    async def rate_limit(self, key: str, rate_per_s: float, burst: float, cost: float, now: float) -> RateDecision:
        raise StoreError("redis rate_limit failed: ConnectionError")


def make(cls: Any, options: dict[str, Any], store: Any = None, clock: FakeClock | None = None) -> Any:
    env = CheckEnv(hostname="mx.test", store=store if store is not None else MemoryStore(), clock=clock or FakeClock())
    return cls(cls.Options.model_validate(options), env)


def ctx(check: Any, ip: str = "192.0.2.1", *, sender: str | None = "a@example.com", rcpt: str | None = None,
        recipients: list[str] | None = None, message: bytes | None = None) -> CheckContext:
    session = Session(id="s1", listener="mx", client_ip=ipaddress.ip_address(ip), client_port=25, helo="h.test")
    tx = Transaction(id="t1", sender=sender, recipient=rcpt, recipients=recipients or [],
                     message=Message(message, []) if message is not None else None)
    return CheckContext(stage=check.stage, session=session, transaction=tx, env=check.env)


def test_parse_rate() -> None:
    assert parse_rate("10/m") == (10 / 60, 10)
    assert parse_rate("100/h") == (100 / 3600, 100)
    assert parse_rate("20/5m") == (20 / 300, 20)
    assert parse_rate(2.5) == (2.5, 2.5)
    for bad in ("10", "10/w", "-1/s", "0/s", 0):
        with pytest.raises(ValueError):
            parse_rate(bad)


async def test_connection_limit_allows_burst_then_exceeds_then_refills() -> None:
    clock = FakeClock()
    check = make(RateLimitCheck, {"limits": {"per_ip": {"count": "connections", "rate": "10/m", "burst": 3}}},
                 clock=clock)
    results = [(await check.run(ctx(check))).outcomes for _ in range(4)]
    assert results == [{"ratelimit.per_ip.ok"}] * 3 + [{"ratelimit.per_ip.exceeded"}]
    assert (await check.run(ctx(check, "192.0.2.2"))).outcomes == {"ratelimit.per_ip.ok"}  # other key
    clock.now += 6  # one token per 6 s
    assert (await check.run(ctx(check))).outcomes == {"ratelimit.per_ip.ok"}
    assert check.declared_outcomes() == {"ratelimit.error", "ratelimit.per_ip.ok", "ratelimit.per_ip.exceeded"}


async def test_client_net_prefixes_group_addresses() -> None:
    limits = {"per_net": {"count": "connections", "key": ["client_net"], "rate": "1/h", "burst": 2,
                          "ipv4_prefix": 24, "ipv6_prefix": 64}}
    check = make(RateLimitCheck, {"limits": limits})
    assert (await check.run(ctx(check, "192.0.2.1"))).outcomes == {"ratelimit.per_net.ok"}
    assert (await check.run(ctx(check, "192.0.2.200"))).outcomes == {"ratelimit.per_net.ok"}
    assert (await check.run(ctx(check, "192.0.2.7"))).outcomes == {"ratelimit.per_net.exceeded"}
    assert (await check.run(ctx(check, "2001:db8::1"))).outcomes == {"ratelimit.per_net.ok"}
    assert (await check.run(ctx(check, "2001:db8::ffff:1"))).outcomes == {"ratelimit.per_net.ok"}
    assert (await check.run(ctx(check, "2001:db8:0:0:1::1"))).outcomes == {"ratelimit.per_net.exceeded"}
    assert (await check.run(ctx(check, "2001:db8:0:1::1"))).outcomes == {"ratelimit.per_net.ok"}


def test_limits_are_only_usable_where_their_count_and_key_are_known() -> None:
    with pytest.raises(ValidationError, match="does not see"):
        RateLimitCheck.Options.model_validate({"limits": {"x": {"count": "recipients", "rate": "1/s"}}})
    with pytest.raises(ValidationError, match="not known at the connect stage"):
        RateLimitCheck.Options.model_validate({"limits": {"x": {"count": "connections", "key": ["sender"],
                                                                "rate": "1/s"}}})
    with pytest.raises(ValidationError, match="not known at the data stage"):
        DataRateLimitCheck.Options.model_validate({"limits": {"x": {"count": "messages", "key": ["recipient"],
                                                                    "rate": "1/s"}}})
    with pytest.raises(ValidationError):
        RateLimitCheck.Options.model_validate({"limits": {"Bad.Name": {"count": "connections", "rate": "1/s"}}})
    RecipientRateLimitCheck.Options.model_validate(
        {"limits": {"x": {"count": "recipients", "key": ["sender", "recipient_domain", "helo"], "rate": "1/s"}}})


async def test_recipient_limit_per_sender() -> None:
    limits = {"per_sender": {"count": "recipients", "key": ["sender"], "rate": "100/h", "burst": 2}}
    check = make(RecipientRateLimitCheck, {"limits": limits})
    outs = [(await check.run(ctx(check, rcpt=f"r{i}@x.test"))).outcomes for i in range(3)]
    assert outs[-1] == {"ratelimit_rcpt.per_sender.exceeded"}
    # the null sender is its own key, other senders are unaffected
    assert (await check.run(ctx(check, sender="", rcpt="r@x.test"))).outcomes == {"ratelimit_rcpt.per_sender.ok"}
    assert (await check.run(ctx(check, sender="B@example.com", rcpt="r@x.test"))).outcomes == {
        "ratelimit_rcpt.per_sender.ok"}


async def test_failed_recipients_are_charged_by_observe_and_peeked_at_rcpt() -> None:
    limits = {"bad_rcpts": {"count": "failed_recipients", "key": ["client_ip"], "rate": "1/h", "burst": 2}}
    check = make(RecipientRateLimitCheck, {"limits": limits})
    c = ctx(check, rcpt="nobody@x.test")
    for _ in range(5):  # peeking takes nothing
        assert (await check.run(c)).outcomes == {"ratelimit_rcpt.bad_rcpts.ok"}
    await check.observe("recipient_refused", c)
    assert (await check.run(c)).outcomes == {"ratelimit_rcpt.bad_rcpts.ok"}
    await check.observe("recipient_refused", c)
    assert (await check.run(c)).outcomes == {"ratelimit_rcpt.bad_rcpts.exceeded"}
    await check.observe("message_accepted", c)  # other events are ignored


async def test_message_and_byte_limits_at_data() -> None:
    limits = {"msgs": {"count": "messages", "key": ["sender_domain"], "rate": "10/h", "burst": 2},
              "bytes": {"count": "bytes", "key": ["client_ip"], "rate": "1000/h", "burst": 1000}}
    check = make(DataRateLimitCheck, {"limits": limits})
    r1 = await check.run(ctx(check, message=b"x" * 600))
    assert r1.outcomes == {"ratelimit_data.msgs.ok", "ratelimit_data.bytes.ok"}
    r2 = await check.run(ctx(check, message=b"x" * 600))
    assert r2.outcomes == {"ratelimit_data.msgs.ok", "ratelimit_data.bytes.exceeded"}
    r3 = await check.run(ctx(check, message=b"x" * 10))
    assert r3.outcomes == {"ratelimit_data.msgs.exceeded", "ratelimit_data.bytes.ok"}
    too_big = await check.run(ctx(check, "192.0.2.9", sender="z@other.test", message=b"x" * 2000))
    assert "ratelimit_data.bytes.exceeded" in too_big.outcomes


@pytest.mark.parametrize(("mode", "expected"), [
    ("fail_open", {"ratelimit.error"}),
    ("fail_closed", {"ratelimit.error", "ratelimit.per_ip.exceeded"}),
])
async def test_store_errors(mode: str, expected: set[str]) -> None:
    check = make(RateLimitCheck, {"limits": {"per_ip": {"count": "connections", "rate": "1/s"}},
                                  "on_store_error": mode}, store=BrokenStore())
    result = await check.run(ctx(check))
    assert result.outcomes == expected
    assert "192.0.2.1" not in " ".join(result.details.values())


async def test_observe_survives_store_errors() -> None:
    limits = {"bad": {"count": "failed_recipients", "rate": "1/h"}}
    check = make(RecipientRateLimitCheck, {"limits": limits}, store=BrokenStore())
    await check.observe("recipient_refused", ctx(check, rcpt="x@y.test"))


POLICY = """
checks:
  ratelimit:
    limits:
      per_ip: {count: connections, key: [client_ip], rate: 10/m, burst: 20}
  ratelimit_rcpt:
    limits:
      per_sender: {count: recipients, key: [sender], rate: 100/h}
  ratelimit_data:
    limits:
      bytes: {count: bytes, key: [client_net], rate: 50000000/h, ipv4_prefix: 24}
  greylist:
    evaluate_at: data
rules:
  - {name: conn_rate, stage: connect, if: {outcome: ratelimit.per_ip.exceeded}, action: tempfail}
  - {name: rcpt_rate, stage: rcpt, if: {outcome: ratelimit_rcpt.per_sender.exceeded}, action: tempfail}
  - {name: byte_rate, stage: data, if: {outcome: ratelimit_data.bytes.exceeded}, action: tempfail}
  - {name: grey, stage: data, if: {outcome: greylist.new}, action: tempfail}
"""


def load(text: str) -> Any:
    from smtpguard.checks.registry import CheckRegistry
    from smtpguard.policy.loader import Source, load_sources

    env = CheckEnv(hostname="mx.test", store=MemoryStore(), clock=FakeClock())
    return load_sources([Source("p.yaml", text, None)], env, CheckRegistry.discover(entry_points=False))


def test_policy_loads_with_outcomes_at_their_stages() -> None:
    loaded = load(POLICY)
    assert {"ratelimit", "ratelimit_rcpt", "ratelimit_data", "greylist"} <= set(loaded.checks)


@pytest.mark.parametrize(("rule", "words"), [
    ("{name: x, stage: connect, if: {outcome: ratelimit_rcpt.per_sender.exceeded}, action: tempfail}",
     "cannot be tested at the connect stage"),
    ("{name: x, stage: mail, if: {outcome: ratelimit_data.bytes.exceeded}, action: tempfail}",
     "cannot be tested at the mail stage"),
    ("{name: x, stage: rcpt, if: {outcome: greylist.new}, action: tempfail}",  # evaluate_at: data
     "cannot be tested at the rcpt stage"),
    ("{name: x, stage: connect, if: {outcome: ratelimit.nope.exceeded}, action: tempfail}", "unknown outcome"),
])
def test_policy_rejects_outcomes_where_the_count_is_unknown(rule: str, words: str) -> None:
    from smtpguard.errors import ConfigError

    with pytest.raises(ConfigError, match=words):
        load(POLICY + f"  - {rule}\n")


def test_key_values_are_normalised_and_unsafe_parts_hashed() -> None:
    from smtpguard.keys import fact_value, join_key, mask_address

    session = Session(id="s", listener="mx", client_ip=ipaddress.ip_address("::ffff:192.0.2.9"), client_port=25)
    tx = Transaction(id="t", sender="", recipient="Bob@Example.TEST")
    assert fact_value("client_ip", session, tx) == "192.0.2.9"
    assert fact_value("client_net", session, tx, ipv4_prefix=24) == "192.0.2.0/24"
    assert fact_value("sender", session, tx) == "<>"
    assert fact_value("sender_domain", session, tx) == "<>"
    assert fact_value("recipient", session, tx) == "bob@example.test"
    assert fact_value("helo", session, tx) == "-"
    assert mask_address(ipaddress.ip_address("2001:db8:1:2:3::1"), 24, 48) == "2001:db8:1::/48"
    assert join_key("a", "b") == "a|b"
    hashed = join_key("x|y", "\x00")
    assert "|y" not in hashed and hashed.count("|") == 1 and "\x00" not in hashed
