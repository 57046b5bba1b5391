"""`concurrency`: open sessions per key (client IP or network), across replicas.

At CONNECT the check takes one slot per configured limit (slot id = replica token + session
id); `observe("connection_closed")` gives them back. Invariants:
- a slot expires `slot_ttl` seconds after it was taken, so a crashed replica leaks nothing for
  longer than that (set it above the longest session the proxy allows);
- a session that was refused a slot holds nothing and releases nothing;
- outcomes per limit: `concurrency.<name>.ok` or `.exceeded`; on a store failure
  `concurrency.error` plus `.exceeded` when `on_store_error: fail_closed`.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from typing import ClassVar, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from smtpguard.checks.base import CheckBase, CheckContext, CheckEnv, CheckOptions, CheckResult
from smtpguard.errors import StoreError
from smtpguard.keys import fact_value, join_key
from smtpguard.ratelimits import NAME_RE
from smtpguard.stage import Scope, Stage

log = logging.getLogger("smtpguard.checks.concurrency")


class SlotLimit(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    key: tuple[Literal["client_ip", "client_net", "listener"], ...] = ("client_ip",)
    limit: int = Field(ge=1)
    slot_ttl: float = Field(default=3600.0, gt=0)
    ipv4_prefix: int = Field(default=32, ge=0, le=32)
    ipv6_prefix: int = Field(default=64, ge=0, le=128)


class ConcurrencyCheck(CheckBase):
    name: ClassVar[str] = "concurrency"
    stage: ClassVar[Stage] = Stage.CONNECT
    scope: ClassVar[Scope] = Scope.CONNECTION

    class Options(CheckOptions):
        limits: dict[str, SlotLimit]
        on_store_error: Literal["fail_open", "fail_closed"] = "fail_open"

        @model_validator(mode="after")
        def _valid(self) -> Self:
            for name in self.limits:
                if not NAME_RE.match(name) or name == "error":
                    raise ValueError(f"concurrency: limit name {name!r} must match {NAME_RE.pattern}")
            return self

    options: Options

    def __init__(self, options: CheckOptions, env: CheckEnv) -> None:
        super().__init__(options, env)
        self._replica = secrets.token_hex(6)
        self._held: dict[str, list[str]] = {}  # session id -> store keys holding its slot

    def declared_outcomes(self) -> frozenset[str]:
        names = {"concurrency.error"}
        for name in self.options.limits:
            names |= {f"concurrency.{name}.ok", f"concurrency.{name}.exceeded"}
        return frozenset(names)

    def _key(self, name: str, spec: SlotLimit, ctx: CheckContext) -> str:
        values = [fact_value(f, ctx.session, None, ipv4_prefix=spec.ipv4_prefix, ipv6_prefix=spec.ipv6_prefix)
                  for f in spec.key]
        return f"concurrency:{name}:{join_key(*values)}"

    def _slot(self, ctx: CheckContext) -> str:
        return f"{self._replica}:{ctx.session.id}"

    async def run(self, ctx: CheckContext) -> CheckResult:
        now = ctx.env.clock.time()
        names = list(self.options.limits)
        keys = [self._key(n, self.options.limits[n], ctx) for n in names]
        results = await asyncio.gather(
            *(ctx.env.store.acquire(k, self._slot(ctx), self.options.limits[n].limit,
                                    self.options.limits[n].slot_ttl, now) for n, k in zip(names, keys, strict=True)),
            return_exceptions=True)
        outcomes: set[str] = set()
        details: dict[str, str] = {}
        held: list[str] = []
        for name, key, result in zip(names, keys, results, strict=True):
            if isinstance(result, StoreError):
                outcomes.add("concurrency.error")
                details[name] = "store_error"
                if self.options.on_store_error == "fail_closed":
                    outcomes.add(f"concurrency.{name}.exceeded")
                log.warning("concurrency: limit %s not evaluated: %s", name, result)
            elif isinstance(result, BaseException):
                raise result
            elif result:
                held.append(key)
                outcomes.add(f"concurrency.{name}.ok")
            else:
                outcomes.add(f"concurrency.{name}.exceeded")
                details[name] = "exceeded"
        if held:
            self._held.setdefault(ctx.session.id, []).extend(held)
        return CheckResult(frozenset(outcomes), details)

    async def observe(self, event: str, ctx: CheckContext) -> None:
        if event != "connection_closed":
            return
        keys = self._held.pop(ctx.session.id, [])
        for key in keys:
            try:
                await ctx.env.store.release(key, self._slot(ctx))
            except StoreError as exc:  # the slot expires on its own
                log.warning("concurrency: release failed, slot will expire: %s", exc)

    def held_sessions(self) -> int:
        """Sessions this replica holds slots for (tests, debugging)."""
        return len(self._held)


CHECK = ConcurrencyCheck
