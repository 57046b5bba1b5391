"""The token bucket, as pure arithmetic (the Redis Lua script in `store/redis.py` mirrors it).

Invariants (hypothesis-tested in tests/unit/test_token_bucket.py):
- a new bucket starts full (`burst` tokens); content never exceeds `burst` nor drops below 0;
- over any span of `t` seconds starting from a new bucket, the allowed cost sums to at most
  `burst + rate * t`;
- a refused charge takes nothing; time going backwards (clock step) refills nothing;
- `idle_ttl` is the time after which an untouched bucket is full again, so deleting it then is
  indistinguishable from keeping it (that is the record's TTL).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from smtpguard.store.base import RateDecision


@dataclass(frozen=True, slots=True)
class Bucket:
    tokens: float
    stamp: float  # when `tokens` was computed


def charge_bucket(bucket: Bucket | None, rate_per_s: float, burst: float, cost: float,
                  now: float) -> tuple[Bucket, RateDecision]:
    """Refill `bucket` up to `now`, then try to take `cost`. Returns the new state and decision."""
    if bucket is None:
        tokens, stamp = burst, now
    else:
        elapsed = max(0.0, now - bucket.stamp)
        tokens = min(burst, bucket.tokens + elapsed * rate_per_s)
        stamp = max(now, bucket.stamp)
    if cost <= tokens:
        tokens -= cost
        return Bucket(tokens, stamp), RateDecision(True, tokens, 0.0)
    retry = math.inf if cost > burst or rate_per_s <= 0 else (cost - tokens) / rate_per_s
    return Bucket(tokens, stamp), RateDecision(False, tokens, retry)


def idle_ttl(tokens: float, rate_per_s: float, burst: float) -> float:
    """Seconds until a bucket holding `tokens` is full again (at least 1 s)."""
    if rate_per_s <= 0:
        return 86400.0
    return max(1.0, math.ceil((burst - tokens) / rate_per_s) + 1.0)
