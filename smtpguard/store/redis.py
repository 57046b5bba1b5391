"""Redis-backed state store, shared by every smtpguard replica.

Invariants:
- each operation is ONE Lua script (EVALSHA, re-sent after a Redis restart), so it is atomic
  and every key it creates gets its expiry in the same script (no TTL-less counter, ever);
- no operation waits longer than `timeout` seconds in total (pool wait + connect + round trip),
  and redis-py's own retries are off; failures raise `StoreError` whose text names the
  operation and the exception class only (never the URL, which may carry a password);
- a `CircuitBreaker` turns a dead Redis into instant `StoreError`s and probes it back;
- keys are `<prefix><kind>:<logical key>`: rl (token bucket hash), cc (concurrency zset),
  gt (greylist triplet hash), gc (greylist client success counter). Single-node or
  Sentinel-fronted Redis; not Redis Cluster (the greylist script touches two keys).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from smtpguard import metrics
from smtpguard.errors import StoreError
from smtpguard.store.base import GreylistDecision, GreylistState, RateDecision
from smtpguard.store.breaker import CircuitBreaker

T = TypeVar("T")

RATE_LIMIT_LUA = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local now = tonumber(ARGV[4])
local s = redis.call('HMGET', KEYS[1], 't', 's')
local tokens, stamp
if s[1] then
  tokens = tonumber(s[1])
  stamp = tonumber(s[2])
  local elapsed = now - stamp
  if elapsed < 0 then elapsed = 0 end
  tokens = math.min(burst, tokens + elapsed * rate)
  if now > stamp then stamp = now end
else
  tokens = burst
  stamp = now
end
local allowed = 0
if cost <= tokens then
  tokens = tokens - cost
  allowed = 1
end
local ttl = 86400
if rate > 0 then ttl = math.max(1, math.ceil((burst - tokens) / rate) + 1) end
redis.call('HSET', KEYS[1], 't', string.format('%.17g', tokens), 's', string.format('%.17g', stamp))
redis.call('EXPIRE', KEYS[1], ttl)
return {allowed, string.format('%.17g', tokens)}
"""

ACQUIRE_LUA = """
local slot = ARGV[1]
local limit = tonumber(ARGV[2])
local ttl = tonumber(ARGV[3])
local now = tonumber(ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%.17g', now))
if not redis.call('ZSCORE', KEYS[1], slot) then
  if redis.call('ZCARD', KEYS[1]) >= limit then return 0 end
end
redis.call('ZADD', KEYS[1], string.format('%.17g', now + ttl), slot)
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('PEXPIRE', KEYS[1], math.max(1, math.ceil((tonumber(last[2]) - now) * 1000)))
return 1
"""

GREYLIST_LUA = """
local delay = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local ttl = tonumber(ARGV[3])
local now = tonumber(ARGV[4])
local auto = tonumber(ARGV[5])
if auto > 0 then
  local c = tonumber(redis.call('GET', KEYS[2]) or '0')
  if c >= auto then return {'allowlisted', '0'} end
end
local r = redis.call('HMGET', KEYS[1], 'f', 'p')
if r[1] and r[2] == '1' then
  redis.call('EXPIRE', KEYS[1], math.max(1, math.ceil(ttl)))
  return {'passed', '0'}
end
if (not r[1]) or (now - tonumber(r[1]) > window) then
  redis.call('HSET', KEYS[1], 'f', string.format('%.17g', now), 'p', '0')
  redis.call('EXPIRE', KEYS[1], math.max(1, math.ceil(window)))
  return {'new', string.format('%.17g', delay)}
end
local waited = now - tonumber(r[1])
if waited < delay then return {'retry_too_soon', string.format('%.17g', delay - waited)} end
redis.call('HSET', KEYS[1], 'p', '1')
redis.call('EXPIRE', KEYS[1], math.max(1, math.ceil(ttl)))
return {'passed', '0'}
"""

COUNT_LUA = """
local c = redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], math.max(1, math.ceil(tonumber(ARGV[1]))))
return c
"""


class RedisStore:
    backend = "redis"

    def __init__(self, url: str, *, timeout: float = 0.2, prefix: str = "smtpguard:", pool_size: int = 64,
                 failures_to_open: int = 3, cooldown: float = 2.0,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.timeout = timeout
        self.prefix = prefix
        pool = aioredis.BlockingConnectionPool.from_url(
            url, max_connections=pool_size, timeout=timeout, socket_timeout=timeout,
            socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0), health_check_interval=0)
        self._redis = aioredis.Redis(connection_pool=pool)
        self.breaker = CircuitBreaker(self.backend, failures_to_open=failures_to_open, cooldown=cooldown,
                                      monotonic=monotonic)
        self._rate = self._redis.register_script(RATE_LIMIT_LUA)
        self._acquire = self._redis.register_script(ACQUIRE_LUA)
        self._greylist = self._redis.register_script(GREYLIST_LUA)
        self._count = self._redis.register_script(COUNT_LUA)

    @property
    def client(self) -> aioredis.Redis:
        """The underlying client (tests inspect keys and TTLs through it)."""
        return self._redis

    async def _call(self, op: str, call: Callable[[], Awaitable[T]]) -> T:
        self.breaker.before_call()
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.timeout):
                result = await call()
        except (RedisError, OSError, TimeoutError) as exc:
            self.breaker.record_failure(type(exc).__name__)
            metrics.STORE_OPERATIONS.labels(self.backend, op, "error").inc()
            raise StoreError(f"redis {op} failed: {type(exc).__name__}") from None
        except asyncio.CancelledError:
            self.breaker.record_failure("cancelled")
            raise
        self.breaker.record_success()
        metrics.STORE_OPERATIONS.labels(self.backend, op, "ok").inc()
        metrics.STORE_SECONDS.labels(self.backend, op).observe(time.perf_counter() - started)
        return result

    async def rate_limit(self, key: str, rate_per_s: float, burst: float, cost: float, now: float) -> RateDecision:
        args = [repr(float(rate_per_s)), repr(float(burst)), repr(float(cost)), repr(float(now))]
        raw: Any = await self._call("rate_limit", lambda: self._rate(keys=[f"{self.prefix}rl:{key}"], args=args))
        allowed = bool(int(raw[0]))
        tokens = float(raw[1])
        if allowed:
            return RateDecision(True, tokens, 0.0)
        retry = math.inf if cost > burst or rate_per_s <= 0 else (cost - tokens) / rate_per_s
        return RateDecision(False, tokens, retry)

    async def acquire(self, key: str, slot: str, limit: int, ttl: float, now: float) -> bool:
        args = [slot, str(int(limit)), repr(float(ttl)), repr(float(now))]
        raw: Any = await self._call("acquire", lambda: self._acquire(keys=[f"{self.prefix}cc:{key}"], args=args))
        return bool(int(raw))

    async def release(self, key: str, slot: str) -> None:
        await self._call("release", lambda: self._redis.zrem(f"{self.prefix}cc:{key}", slot))

    async def greylist(self, triplet_key: str, client_key: str, delay: float, window: float, ttl: float,
                       now: float, auto_allow_after: int = 0) -> GreylistDecision:
        keys = [f"{self.prefix}gt:{triplet_key}", f"{self.prefix}gc:{client_key}"]
        args = [repr(float(delay)), repr(float(window)), repr(float(ttl)), repr(float(now)), str(int(auto_allow_after))]
        raw: Any = await self._call("greylist", lambda: self._greylist(keys=keys, args=args))
        state = GreylistState(raw[0].decode() if isinstance(raw[0], bytes) else raw[0])
        return GreylistDecision(state, float(raw[1]))

    async def greylist_success(self, client_key: str, ttl: float, now: float) -> int:
        raw: Any = await self._call(
            "greylist_success", lambda: self._count(keys=[f"{self.prefix}gc:{client_key}"], args=[repr(float(ttl))]))
        return int(raw)

    async def close(self) -> None:
        with contextlib.suppress(RedisError, OSError):
            await self._redis.aclose()
