"""The state store's interface (rate limits, concurrency, greylisting), shared by replicas
when the backend is Redis. Implementations: `memory.MemoryStore`, `redis.RedisStore`;
`factory.create_store(url)` picks one. The Protocol and result types live in `base.py`.
"""

from __future__ import annotations

from smtpguard.store.base import GreylistDecision, GreylistState, RateDecision, Store

__all__ = ["GreylistDecision", "GreylistState", "RateDecision", "Store"]
