"""The state store's interface: rate limits, concurrency slots and greylisting records.

Implementations: `smtpguard.store.memory.MemoryStore` (one process) and
`smtpguard.store.redis.RedisStore` (shared by every replica). Invariants every implementation
keeps (tests/unit/test_store_memory.py and tests/integration/test_store_redis.py check both):
- every operation is atomic: two replicas calling `rate_limit` on one key never both spend the
  last token;
- every record is created with an expiry and never lives longer than its operation's TTL after
  its last write (no "counter without TTL" -- Haraka #1757);
- `now` is wall-clock seconds passed by the caller (injectable clock; replicas sharing a Redis
  need NTP-synchronised clocks, like every distributed rate limiter that takes client time);
- a backend that cannot answer raises `smtpguard.errors.StoreError` within its timeout and
  never hangs; callers turn that into `<check>.error` outcomes.
Keys passed in are logical (`rl:per_ip:192.0.2.1`); the store adds its prefix.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class RateDecision:
    """Result of one token-bucket charge.

    `tokens_left` is the bucket content after the charge (before it when refused);
    `retry_after` is 0 when allowed, else the seconds until `cost` tokens are available
    (`inf` when `cost` exceeds the burst and can never be paid).
    """

    allowed: bool
    tokens_left: float
    retry_after: float


class GreylistState(enum.Enum):
    NEW = "new"  # first sighting (or the last one fell out of the retry window)
    TOO_SOON = "retry_too_soon"  # seen, but the delay has not elapsed yet
    PASSED = "passed"  # retried inside the window (now or earlier)
    ALLOWLISTED = "allowlisted"  # the client earned auto-allowlisting


@dataclass(frozen=True, slots=True)
class GreylistDecision:
    state: GreylistState
    retry_in: float = 0.0  # seconds until a retry passes (NEW / TOO_SOON), else 0


class Store(Protocol):
    """What checks need from shared state. All methods may raise `StoreError`."""

    backend: str  # metric label: "memory" or "redis"

    async def rate_limit(self, key: str, rate_per_s: float, burst: float, cost: float, now: float) -> RateDecision:
        """Charge `cost` tokens from a bucket holding at most `burst`, refilled at `rate_per_s`.

        A new bucket starts full. `cost == 0` only reads (peek). Refused charges take nothing.
        """
        ...

    async def acquire(self, key: str, slot: str, limit: int, ttl: float, now: float) -> bool:
        """Take slot `slot` of at most `limit` under `key`; slots expire `ttl` s after taking.

        Taking a slot already held refreshes it and succeeds.
        """
        ...

    async def release(self, key: str, slot: str) -> None:
        """Give slot `slot` back (no error if it is not held any more)."""
        ...

    async def greylist(self, triplet_key: str, client_key: str, delay: float, window: float, ttl: float,
                       now: float, auto_allow_after: int = 0) -> GreylistDecision:
        """Look up and update one greylisting triplet.

        A new triplet lives `window` s (its retry window); a passed one lives `ttl` s after its
        last pass. When `auto_allow_after > 0` and the client's success count (see
        `greylist_success`) reached it, the answer is ALLOWLISTED without touching the triplet.
        """
        ...

    async def greylist_success(self, client_key: str, ttl: float, now: float) -> int:
        """Count one successful delivery after greylisting for a client; returns the new count."""
        ...

    async def close(self) -> None:
        """Release connections. Idempotent."""
        ...
