"""greylist: triplet lifecycle, masking, skips, auto-allowlisting, DATA mode, store failures."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import pytest
from policy_fakes import FakeClock

from smtpguard.checks.base import CheckContext, CheckEnv, CheckResult
from smtpguard.checks.greylist import GreylistCheck
from smtpguard.errors import StoreError
from smtpguard.facts import Session, Transaction
from smtpguard.stage import Stage
from smtpguard.store.base import GreylistDecision
from smtpguard.store.memory import MemoryStore


class BrokenStore(MemoryStore):
    async def greylist(self, triplet_key: str, client_key: str, delay: float, window: float, ttl: float,
                       now: float, auto_allow_after: int = 0) -> GreylistDecision:
        raise StoreError("redis greylist failed: ConnectionError")


def make(options: dict[str, Any] | None = None, store: Any = None,
         clock: FakeClock | None = None) -> GreylistCheck:
    env = CheckEnv(hostname="mx.test", store=store if store is not None else MemoryStore(),
                   clock=clock or FakeClock())
    return GreylistCheck(GreylistCheck.Options.model_validate(options or {}), env)


def ctx(check: GreylistCheck, ip: str = "192.0.2.1", sender: str = "s@sender.test", rcpt: str = "r@example.test",
        *, tx_id: str = "t1", stage: Stage = Stage.RCPT, recipients: list[str] | None = None,
        results: dict[str, CheckResult] | None = None) -> CheckContext:
    session = Session(id="s1", listener="mx", client_ip=ipaddress.ip_address(ip), client_port=25)
    tx = Transaction(id=tx_id, sender=sender, recipient=rcpt if stage is Stage.RCPT else None,
                     recipients=recipients or [])
    return CheckContext(stage=stage, session=session, transaction=tx, env=check.env, results=results or {})


async def outcomes(check: GreylistCheck, c: CheckContext) -> set[str]:
    return set((await check.run(c)).outcomes)


async def test_new_too_soon_passed_then_stays_passed() -> None:
    clock = FakeClock()
    check = make(clock=clock)
    assert await outcomes(check, ctx(check)) == {"greylist.new"}
    clock.now += 60
    assert await outcomes(check, ctx(check)) == {"greylist.retry_too_soon"}
    clock.now += 240
    assert await outcomes(check, ctx(check)) == {"greylist.passed"}
    clock.now += 86400
    assert await outcomes(check, ctx(check)) == {"greylist.passed"}
    assert check.declared_outcomes() == {"greylist.new", "greylist.retry_too_soon", "greylist.passed",
                                         "greylist.skipped", "greylist.error"}


async def test_retry_after_window_is_new_again() -> None:
    clock = FakeClock()
    check = make({"retry_window": 3600}, clock=clock)
    await check.run(ctx(check))
    clock.now += 3601
    assert await outcomes(check, ctx(check)) == {"greylist.new"}


async def test_triplet_uses_client_network_and_case_insensitive_addresses() -> None:
    clock = FakeClock()
    check = make(clock=clock)
    await check.run(ctx(check, "192.0.2.1"))
    clock.now += 301
    assert await outcomes(check, ctx(check, "192.0.2.77", "S@Sender.test", "R@example.test")) == {"greylist.passed"}
    assert await outcomes(check, ctx(check, "192.0.3.1")) == {"greylist.new"}
    assert await outcomes(check, ctx(check, rcpt="other@example.test")) == {"greylist.new"}


async def test_store_keys_carry_no_addresses() -> None:
    store = MemoryStore()
    check = make(store=store)
    await check.run(ctx(check))
    assert store._data and all("sender.test" not in k and "example.test" not in k for k in store._data)


async def test_skips(tmp_path: Path) -> None:
    nets = tmp_path / "nets.txt"
    nets.write_text("198.51.100.0/24\n")
    check = make({"allow_networks_files": [str(nets)], "allow_sender_domains": [".trusted.test"],
                  "allow_recipient_domains": ["postmaster.test"]})
    assert await outcomes(check, ctx(check, "198.51.100.9")) == {"greylist.skipped"}
    assert await outcomes(check, ctx(check, sender="a@mail.trusted.test")) == {"greylist.skipped"}
    assert await outcomes(check, ctx(check, rcpt="abuse@postmaster.test")) == {"greylist.skipped"}
    assert await outcomes(check, ctx(check)) == {"greylist.new"}


async def test_list_files_relative_to_policy_dir(tmp_path: Path) -> None:
    (tmp_path / "nets.txt").write_text("198.51.100.0/24\n")
    opts = GreylistCheck.Options.model_validate({"allow_networks_files": ["nets.txt"]},
                                                context={"policy_dir": tmp_path})
    check = GreylistCheck(opts, CheckEnv(hostname="mx.test", store=MemoryStore(), clock=FakeClock()))
    assert await outcomes(check, ctx(check, "198.51.100.9")) == {"greylist.skipped"}


async def test_dnswl_and_spf_skips_declare_requirements() -> None:
    check = make({"skip_dnswl_listed": True, "skip_spf_pass_domains": ["bank.test"]})
    assert check.requires == ("dnswl", "spf")
    assert make().requires == ()
    dnswl = CheckResult.of("dnswl.listed", "dnswl.swl.listed")
    assert await outcomes(check, ctx(check, results={"dnswl": dnswl})) == {"greylist.skipped"}
    spf_pass = CheckResult.of("spf.pass")
    assert await outcomes(check, ctx(check, sender="x@bank.test", results={"spf": spf_pass})) == {"greylist.skipped"}
    assert await outcomes(check, ctx(check, sender="x@bank.test",
                                     results={"spf": CheckResult.of("spf.softfail")})) == {"greylist.new"}
    assert await outcomes(check, ctx(check, sender="x@other.test", results={"spf": spf_pass})) == {"greylist.new"}


async def test_auto_allowlisting_after_accepted_messages() -> None:
    clock = FakeClock()
    check = make({"auto_allow_after": 2}, clock=clock)
    for i in range(2):
        rcpt = f"r{i}@example.test"
        await check.run(ctx(check, rcpt=rcpt))
        clock.now += 301
        assert await outcomes(check, ctx(check, rcpt=rcpt, tx_id=f"tx{i}")) == {"greylist.passed"}
        await check.observe("message_accepted", ctx(check, rcpt=rcpt, tx_id=f"tx{i}"))
    result = await check.run(ctx(check, "192.0.2.50", rcpt="brand-new@example.test"))
    assert result.outcomes == {"greylist.passed"}
    assert result.details["greylist_reason"] == "auto_allowlisted"
    assert await outcomes(check, ctx(check, "203.0.113.1", rcpt="brand-new@example.test")) == {"greylist.new"}


async def test_message_accepted_without_a_pass_counts_nothing() -> None:
    store = MemoryStore()
    check = make({"auto_allow_after": 1}, store=store)
    await check.observe("message_accepted", ctx(check))
    assert not [k for k in store._data if k.startswith("gc:")]


async def test_data_stage_mode_uses_all_recipients_worst_state() -> None:
    clock = FakeClock()
    check = make({"evaluate_at": "data"}, clock=clock)
    assert await outcomes(check, ctx(check)) == {"greylist.skipped"}  # RCPT run: deferred to DATA
    data = ctx(check, stage=Stage.DATA, recipients=["a@example.test"])
    assert await outcomes(check, data) == {"greylist.new"}
    clock.now += 301
    assert await outcomes(check, data) == {"greylist.passed"}
    both = ctx(check, stage=Stage.DATA, recipients=["a@example.test", "b@example.test"])
    assert await outcomes(check, both) == {"greylist.new"}


@pytest.mark.parametrize(("mode", "expected"), [
    ("fail_open", {"greylist.error"}),
    ("fail_closed", {"greylist.error", "greylist.new"}),
])
async def test_store_errors(mode: str, expected: set[str]) -> None:
    check = make({"on_store_error": mode}, store=BrokenStore())
    assert await outcomes(check, ctx(check)) == expected
