"""`greylist`: postgrey-style greylisting of (client network, sender, recipient) triplets.

At RCPT (default) one triplet per recipient; with `evaluate_at: data`, all accepted recipients
of the transaction at end of DATA (worst state wins: new > retry_too_soon > passed) -- that
instance then has stage DATA and scope TRANSACTION, so rules test it at the data stage.
Invariants:
- a triplet first seen is `greylist.new`; retried before `delay` it is `greylist.retry_too_soon`;
  retried after `delay` and within `retry_window` it is `greylist.passed` and stays so for
  `record_ttl` after its last use; retried after the window it is new again;
- a client (network) with `auto_allow_after` accepted messages that passed greylisting is
  passed without triplet checks for `auto_allow_ttl` (counted on `observe("message_accepted")`);
- allow-listed client networks, sender or recipient domains, DNSWL-listed clients (requires
  `dnswl`) and SPF-pass senders from listed domains (requires `spf`) give `greylist.skipped`
  without touching the store;
- a store failure gives `greylist.error`, plus `greylist.new` when `on_store_error: fail_closed`;
- triplets are stored hashed (no addresses in store keys); replies get no template fields.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections import OrderedDict
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field, ValidationInfo, field_validator

from smtpguard.checks.base import CheckBase, CheckContext, CheckEnv, CheckOptions, CheckResult
from smtpguard.errors import StoreError
from smtpguard.facts import domain_of
from smtpguard.keys import fact_value
from smtpguard.lists import load_cidr_set, load_domain_set, resolve_list_path
from smtpguard.stage import Scope, Stage
from smtpguard.store.base import GreylistDecision, GreylistState

log = logging.getLogger("smtpguard.checks.greylist")

_PENDING_MAX = 50_000
_RANK = {GreylistState.NEW: 3, GreylistState.TOO_SOON: 2, GreylistState.PASSED: 1, GreylistState.ALLOWLISTED: 0}


class GreylistCheck(CheckBase):
    name: ClassVar[str] = "greylist"
    stage: ClassVar[Stage] = Stage.RCPT
    scope: ClassVar[Scope] = Scope.RECIPIENT
    OUTCOMES: ClassVar[tuple[str, ...]] = ("new", "retry_too_soon", "passed", "skipped")

    class Options(CheckOptions):
        delay: float = Field(default=300.0, ge=0)
        retry_window: float = Field(default=4 * 3600.0, gt=0)
        record_ttl: float = Field(default=35 * 86400.0, gt=0)
        auto_allow_after: int = Field(default=5, ge=0)  # 0: never
        auto_allow_ttl: float = Field(default=35 * 86400.0, gt=0)
        ipv4_prefix: int = Field(default=24, ge=0, le=32)
        ipv6_prefix: int = Field(default=64, ge=0, le=128)
        evaluate_at: Literal["rcpt", "data"] = "rcpt"
        allow_networks: tuple[str, ...] = ()
        allow_networks_files: tuple[Path, ...] = ()
        allow_sender_domains: tuple[str, ...] = ()
        allow_sender_domains_files: tuple[Path, ...] = ()
        allow_recipient_domains: tuple[str, ...] = ()
        allow_recipient_domains_files: tuple[Path, ...] = ()
        skip_dnswl_listed: bool = False
        skip_spf_pass_domains: tuple[str, ...] = ()
        skip_spf_pass_domains_files: tuple[Path, ...] = ()
        on_store_error: Literal["fail_open", "fail_closed"] = "fail_open"

        @field_validator("allow_networks_files", "allow_sender_domains_files", "allow_recipient_domains_files",
                         "skip_spf_pass_domains_files")
        @classmethod
        def _relative_to_policy(cls, value: tuple[Path, ...], info: ValidationInfo) -> tuple[Path, ...]:
            base = (info.context or {}).get("policy_dir")
            return tuple(resolve_list_path(p, base) for p in value)

    options: Options

    def __init__(self, options: CheckOptions, env: CheckEnv) -> None:
        super().__init__(options, env)
        o = self.options
        self.allow_networks = load_cidr_set(o.allow_networks, o.allow_networks_files)
        self.allow_senders = load_domain_set(o.allow_sender_domains, o.allow_sender_domains_files)
        self.allow_recipients = load_domain_set(o.allow_recipient_domains, o.allow_recipient_domains_files)
        self.spf_domains = load_domain_set(o.skip_spf_pass_domains, o.skip_spf_pass_domains_files)
        requires: list[str] = []
        if o.skip_dnswl_listed:
            requires.append("dnswl")
        if len(self.spf_domains):
            requires.append("spf")
        self.requires = tuple(requires)  # type: ignore[misc]  # per-instance, read by the runner
        if o.evaluate_at == "data":
            # per-instance stage and scope (the loader and runner read the instance attributes):
            # outcomes become testable at DATA only, once per transaction
            self.stage = Stage.DATA  # type: ignore[misc]
            self.scope = Scope.TRANSACTION  # type: ignore[misc]
        self._pending: OrderedDict[str, str] = OrderedDict()  # transaction id -> client key

    def _result(self, short: str, **details: str) -> CheckResult:
        return CheckResult(frozenset({f"greylist.{short}"}), details)

    def skip_reason(self, ctx: CheckContext, recipients: list[str]) -> str | None:
        """Why this transaction is not greylisted, or None."""
        tx = ctx.transaction
        if ctx.session.client_ip in self.allow_networks:
            return "allow_networks"
        sender_domain = tx.sender_domain if tx is not None else None
        if sender_domain is not None and sender_domain in self.allow_senders:
            return "allow_sender_domains"
        if recipients and all(domain_of(r) in self.allow_recipients for r in recipients):
            return "allow_recipient_domains"
        dnswl = ctx.results.get("dnswl")
        if self.options.skip_dnswl_listed and dnswl is not None and "dnswl.listed" in dnswl.outcomes:
            return "dnswl"
        spf = ctx.results.get("spf")
        if (spf is not None and "spf.pass" in spf.outcomes and sender_domain is not None
                and sender_domain in self.spf_domains):
            return "spf_pass"
        return None

    async def run(self, ctx: CheckContext) -> CheckResult:
        tx = ctx.transaction
        if tx is None:
            return self._result("skipped", greylist_reason="no_transaction")
        at_data = ctx.stage is Stage.DATA
        if (self.options.evaluate_at == "data") != at_data:
            return self._result("skipped", greylist_reason=f"evaluated_at_{self.options.evaluate_at}")
        recipients = list(tx.recipients) if at_data else ([tx.recipient] if tx.recipient else [])
        reason = self.skip_reason(ctx, recipients)
        if reason is not None:
            return self._result("skipped", greylist_reason=reason)
        if not recipients:
            return self._result("skipped", greylist_reason="no_recipient")
        o = self.options
        net = fact_value("client_net", ctx.session, tx, ipv4_prefix=o.ipv4_prefix, ipv6_prefix=o.ipv6_prefix)
        sender = (tx.sender or "").lower() or "<>"
        client_key = f"greylist:c:{net}"
        now = ctx.env.clock.time()
        calls = [ctx.env.store.greylist(self._triplet(net, sender, rcpt), client_key, o.delay, o.retry_window,
                                        o.record_ttl, now, o.auto_allow_after) for rcpt in recipients]
        decisions = await asyncio.gather(*calls, return_exceptions=True)
        failures = [d for d in decisions if isinstance(d, StoreError)]
        for d in decisions:
            if isinstance(d, BaseException) and not isinstance(d, StoreError):
                raise d
        if failures:
            log.warning("greylist: store failed: %s", failures[0])
            outcomes = {"greylist.error"} | ({"greylist.new"} if o.on_store_error == "fail_closed" else set())
            return CheckResult(frozenset(outcomes), {"greylist_reason": "store_error"})
        worst = max((d for d in decisions if isinstance(d, GreylistDecision)), key=lambda d: _RANK[d.state])
        if worst.state is GreylistState.ALLOWLISTED:
            return self._result("passed", greylist_reason="auto_allowlisted")
        if worst.state is GreylistState.PASSED:
            if o.auto_allow_after > 0:
                self._remember(tx.id, client_key)
            return self._result("passed", greylist_reason="retried")
        return self._result(worst.state.value, greylist_retry_in=f"{worst.retry_in:.0f}")

    @staticmethod
    def _triplet(net: str, sender: str, recipient: str) -> str:
        digest = hashlib.sha256(f"{net}\0{sender}\0{recipient.lower()}".encode("utf-8", "surrogatepass"))
        return "greylist:t:" + digest.hexdigest()[:32]

    def _remember(self, transaction_id: str, client_key: str) -> None:
        self._pending[transaction_id] = client_key
        self._pending.move_to_end(transaction_id)
        while len(self._pending) > _PENDING_MAX:
            self._pending.popitem(last=False)

    async def observe(self, event: str, ctx: CheckContext) -> None:
        if event != "message_accepted" or ctx.transaction is None:
            return
        client_key = self._pending.pop(ctx.transaction.id, None)
        if client_key is None:
            return
        try:
            await ctx.env.store.greylist_success(client_key, self.options.auto_allow_ttl, ctx.env.clock.time())
        except StoreError as exc:
            log.warning("greylist: could not count a successful delivery: %s", exc)


CHECK = GreylistCheck
