"""The rate-limit engine shared by the `ratelimit`, `ratelimit_rcpt` and `ratelimit_data` checks.

A limit is a token bucket (`rate`, `burst`) per key (any combination of facts, see `keys.py`),
charged with what it counts. Invariants:
- one store round trip per limit per run, all limits of a run concurrently;
- a limit's outcomes are `<check>.<limit>.ok` / `<check>.<limit>.exceeded`, exactly one of them
  per limit per run unless the store failed: then `<check>.error`, plus `<check>.<limit>.exceeded`
  when the check's `on_store_error` is `fail_closed` (never `.ok`);
- details name limits, never key values (no addresses in reply templates); logs may carry keys.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from smtpguard.checks.base import CheckContext, CheckOptions, CheckResult
from smtpguard.errors import StoreError
from smtpguard.keys import FACT_STAGE, RECIPIENT_FACTS, Fact, fact_value, join_key
from smtpguard.stage import Stage
from smtpguard.store.base import RateDecision, Store

log = logging.getLogger("smtpguard.checks.ratelimit")

Count = Literal["connections", "recipients", "failed_recipients", "messages", "bytes"]
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_RATE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(\d*)\s*([smhd])\s*$")
_UNIT = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_rate(value: str | float) -> tuple[float, float]:
    """`10/m` -> (10/60 per second, 10); `100/2h`; a bare number is per second. Returns (rate, count)."""
    if isinstance(value, int | float):
        if value <= 0:
            raise ValueError("rate must be positive")
        return float(value), float(value)
    match = _RATE_RE.match(value)
    if not match:
        raise ValueError(f"rate {value!r} is not COUNT/UNIT (e.g. 10/m, 100/h, 500/d, 20/5m)")
    count = float(match.group(1))
    span = float(match.group(2) or 1) * _UNIT[match.group(3)]
    if count <= 0 or span <= 0:
        raise ValueError("rate must be positive")
    return count / span, count


class LimitSpec(BaseModel):
    """One named limit. `burst` defaults to the count of `rate` (10/m -> 10)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    count: Count
    key: tuple[Fact, ...] = ("client_ip",)
    rate: str | float
    burst: float | None = Field(default=None, gt=0)
    ipv4_prefix: int = Field(default=32, ge=0, le=32)
    ipv6_prefix: int = Field(default=64, ge=0, le=128)

    @field_validator("rate")
    @classmethod
    def _check_rate(cls, value: str | float) -> str | float:
        parse_rate(value)
        return value

    @field_validator("key")
    @classmethod
    def _check_key(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("key needs at least one fact")
        return value

    @property
    def rate_per_s(self) -> float:
        return parse_rate(self.rate)[0]

    @property
    def bucket_size(self) -> float:
        return self.burst if self.burst is not None else max(1.0, parse_rate(self.rate)[1])


class RateLimitOptions(CheckOptions):
    limits: dict[str, LimitSpec]
    on_store_error: Literal["fail_open", "fail_closed"] = "fail_open"


def validate_limits(check: str, stage: Stage, counts: Iterable[str], limits: Mapping[str, LimitSpec]) -> None:
    """Load-time checks: limit names, counts this check can see, key facts known at `stage`."""
    allowed = set(counts)
    for name, spec in limits.items():
        if not NAME_RE.match(name) or name in ("error",):
            raise ValueError(f"{check}: limit name {name!r} must match {NAME_RE.pattern} and not be 'error'")
        if spec.count not in allowed:
            raise ValueError(f"{check}: limit {name!r} counts {spec.count}, which this check does not see "
                             f"(it counts {', '.join(sorted(allowed))})")
        for fact in spec.key:
            known = FACT_STAGE[fact].facts_available_at(stage)
            if not known or (fact in RECIPIENT_FACTS and stage is not Stage.RCPT):
                raise ValueError(f"{check}: limit {name!r} keys on {fact}, not known at the {stage.value} stage")


def limit_outcomes(check: str, limits: Iterable[str]) -> frozenset[str]:
    names = {f"{check}.error"}
    for name in limits:
        names |= {f"{check}.{name}.ok", f"{check}.{name}.exceeded"}
    return frozenset(names)


def limit_key(check: str, name: str, spec: LimitSpec, ctx: CheckContext) -> str:
    values = [fact_value(f, ctx.session, ctx.transaction, ipv4_prefix=spec.ipv4_prefix,
                         ipv6_prefix=spec.ipv6_prefix) for f in spec.key]
    return f"{check}:{name}:{join_key(*values)}"


async def charge_limits(check: str, options: RateLimitOptions, ctx: CheckContext,
                        cost_of: Callable[[LimitSpec], float | None]) -> CheckResult:
    """Charge every limit whose `cost_of` is not None; `cost == 0` peeks (exceeded below 1 token)."""
    store: Store = ctx.env.store
    now = ctx.env.clock.time()
    names: list[str] = []
    calls: list[Any] = []
    for name, spec in options.limits.items():
        cost = cost_of(spec)
        if cost is None:
            continue
        names.append(name)
        calls.append(store.rate_limit(limit_key(check, name, spec, ctx), spec.rate_per_s, spec.bucket_size,
                                      cost, now))
    results = await asyncio.gather(*calls, return_exceptions=True)
    outcomes: set[str] = set()
    details: dict[str, str] = {}
    for name, result in zip(names, results, strict=True):
        if isinstance(result, StoreError):
            outcomes.add(f"{check}.error")
            details[f"{name}"] = "store_error"
            if options.on_store_error == "fail_closed":
                outcomes.add(f"{check}.{name}.exceeded")
            log.warning("%s: limit %s not evaluated: %s", check, name, result)
            continue
        if isinstance(result, BaseException):
            raise result
        decision: RateDecision = result
        exceeded = not decision.allowed or (cost_of(options.limits[name]) == 0 and decision.tokens_left < 1)
        outcomes.add(f"{check}.{name}.{'exceeded' if exceeded else 'ok'}")
        if exceeded:
            wait = decision.retry_after if decision.retry_after > 0 else 1 / options.limits[name].rate_per_s
            details[name] = f"exceeded retry_after={wait:.0f}s" if wait != float("inf") else "exceeded never"
    return CheckResult(frozenset(outcomes), details)


async def charge_in_background(check: str, options: RateLimitOptions, ctx: CheckContext,
                               cost_of: Callable[[LimitSpec], float | None]) -> None:
    """`charge_limits` for observe hooks: store errors are logged, never raised."""
    try:
        await charge_limits(check, options, ctx, cost_of)
    except StoreError as exc:  # pragma: no cover - charge_limits already turns these into outcomes
        log.warning("%s: observe failed: %s", check, exc)
