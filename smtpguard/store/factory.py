"""Build a `Store` from its URL: `memory` or `redis://HOST:PORT/DB` (also `rediss://`, `unix://`).

Invariant: building never touches the network (Redis connects lazily, per operation), so a
policy loads even while Redis is down; a bad URL is a `ConfigError` that does not echo the URL
(it may carry a password).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from smtpguard.errors import ConfigError
from smtpguard.store.base import Store
from smtpguard.store.memory import MemoryStore
from smtpguard.store.redis import RedisStore


def create_store(url: str, *, timeout: float = 0.2, prefix: str = "smtpguard:", pool_size: int = 64,
                 failures_to_open: int = 3, cooldown: float = 2.0,
                 monotonic: Callable[[], float] = time.monotonic) -> Store:
    scheme = url.split(":", 1)[0].lower() if ":" in url else url.lower()
    if scheme == "memory":
        return MemoryStore()
    if scheme in ("redis", "rediss", "unix"):
        if timeout <= 0:
            raise ConfigError("store timeout must be positive")
        try:
            return RedisStore(url, timeout=timeout, prefix=prefix, pool_size=pool_size,
                              failures_to_open=failures_to_open, cooldown=cooldown, monotonic=monotonic)
        except ValueError:
            raise ConfigError("store URL is not a valid redis:// URL") from None
    raise ConfigError(f"store URL scheme {scheme[:16]!r} is not supported (use memory or redis://HOST:PORT/DB)")
