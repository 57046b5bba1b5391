"""In-process state store: one replica only (counters are per process).

Invariants: every record carries an expiry and is treated as absent once `now` passes it
(expired records are also swept every `SWEEP_EVERY` operations, so memory stays bounded by the
live keys); every operation runs without awaiting, hence is atomic on the event loop.
Semantics match `RedisStore` exactly (same tests run against both).
"""

from __future__ import annotations

from typing import Any

from smtpguard import metrics
from smtpguard.store.base import GreylistDecision, GreylistState, RateDecision
from smtpguard.store.bucket import charge_bucket, idle_ttl

SWEEP_EVERY = 4096


class MemoryStore:
    backend = "memory"

    def __init__(self) -> None:
        self._data: dict[str, tuple[float, Any]] = {}  # key -> (expires_at, value)
        self._ops = 0
        self._last_now = 0.0
        self._counters = {op: metrics.STORE_OPERATIONS.labels("memory", op, "ok")
                          for op in ("rate_limit", "acquire", "release", "greylist", "greylist_success")}

    def size(self) -> int:
        """Live and not yet swept records (no `__len__`: an empty store must stay truthy)."""
        return len(self._data)

    # -- plumbing ------------------------------------------------------------------------------

    def _get(self, key: str, now: float) -> Any:
        item = self._data.get(key)
        if item is None:
            return None
        if item[0] <= now:
            del self._data[key]
            return None
        return item[1]

    def _put(self, key: str, value: Any, ttl: float, now: float) -> None:
        self._data[key] = (now + ttl, value)

    def _tick(self, op: str, now: float | None) -> None:
        self._counters[op].inc()
        if now is not None:  # only the callers' clock advances the sweep horizon
            self._last_now = max(self._last_now, now)
        self._ops += 1
        if self._ops % SWEEP_EVERY == 0:
            self.sweep(self._last_now)

    def sweep(self, now: float) -> int:
        """Drop expired records; returns how many."""
        dead = [k for k, (exp, _) in self._data.items() if exp <= now]
        for k in dead:
            del self._data[k]
        return len(dead)

    def ttl_of(self, key: str, now: float) -> float | None:
        """Remaining lifetime of a record (tests and debugging)."""
        item = self._data.get(key)
        return None if item is None or item[0] <= now else item[0] - now

    # -- operations ----------------------------------------------------------------------------

    async def rate_limit(self, key: str, rate_per_s: float, burst: float, cost: float, now: float) -> RateDecision:
        self._tick("rate_limit", now)
        k = "rl:" + key
        bucket, decision = charge_bucket(self._get(k, now), rate_per_s, burst, cost, now)
        self._put(k, bucket, idle_ttl(bucket.tokens, rate_per_s, burst), bucket.stamp)
        return decision

    async def acquire(self, key: str, slot: str, limit: int, ttl: float, now: float) -> bool:
        self._tick("acquire", now)
        k = "cc:" + key
        slots: dict[str, float] = {s: exp for s, exp in (self._get(k, now) or {}).items() if exp > now}
        if slot not in slots and len(slots) >= limit:
            if slots:
                self._put(k, slots, max(slots.values()) - now, now)
            return False
        slots[slot] = now + ttl
        self._put(k, slots, max(slots.values()) - now, now)
        return True

    async def release(self, key: str, slot: str) -> None:
        self._tick("release", None)
        k = "cc:" + key
        item = self._data.get(k)
        if item is None:
            return
        slots: dict[str, float] = item[1]
        slots.pop(slot, None)
        if not slots:
            del self._data[k]

    async def greylist(self, triplet_key: str, client_key: str, delay: float, window: float, ttl: float,
                       now: float, auto_allow_after: int = 0) -> GreylistDecision:
        self._tick("greylist", now)
        if auto_allow_after > 0:
            count = self._get("gc:" + client_key, now)
            if count is not None and count >= auto_allow_after:
                return GreylistDecision(GreylistState.ALLOWLISTED)
        k = "gt:" + triplet_key
        record: tuple[float, bool] | None = self._get(k, now)  # (first seen, passed)
        if record is not None and record[1]:
            self._put(k, record, ttl, now)
            return GreylistDecision(GreylistState.PASSED)
        if record is None or now - record[0] > window:
            self._put(k, (now, False), window, now)
            return GreylistDecision(GreylistState.NEW, delay)
        waited = now - record[0]
        if waited < delay:
            return GreylistDecision(GreylistState.TOO_SOON, delay - waited)
        self._put(k, (record[0], True), ttl, now)
        return GreylistDecision(GreylistState.PASSED)

    async def greylist_success(self, client_key: str, ttl: float, now: float) -> int:
        self._tick("greylist_success", now)
        k = "gc:" + client_key
        count = int(self._get(k, now) or 0) + 1
        self._put(k, count, ttl, now)
        return count

    async def close(self) -> None:
        self._data.clear()
