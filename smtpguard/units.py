"""Human units in config files: durations (`30s`, `5m`, `1h`, `250ms`) and sizes (`25MB`, `64KiB`)."""

from __future__ import annotations

import re

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$", re.IGNORECASE)
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(b|kb|mb|gb|kib|mib|gib|k|m|g)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {
    "b": 1, "k": 1000, "kb": 1000, "mb": 1000**2, "m": 1000**2, "gb": 1000**3, "g": 1000**3,
    "kib": 1024, "mib": 1024**2, "gib": 1024**3,
}


def parse_duration(value: object) -> float:
    """Seconds from `30s`, `5m`, `1.5h`, `250ms` or a bare number (seconds)."""
    if isinstance(value, bool):
        raise ValueError("a duration must be a number or text like '30s'")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    if isinstance(value, str):
        m = _DURATION.match(value)
        if m:
            return float(m.group(1)) * _DURATION_UNITS[(m.group(2) or "s").lower()]
    raise ValueError(f"{value!r} is not a duration like '30s', '5m' or '1h'")


def parse_size(value: object) -> int:
    """Bytes from `25MB` (10^6), `64KiB` (2^10), or a bare number of bytes."""
    if isinstance(value, bool):
        raise ValueError("a size must be a number or text like '25MB'")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return value
    if isinstance(value, str):
        m = _SIZE.match(value)
        if m:
            return int(float(m.group(1)) * _SIZE_UNITS[(m.group(2) or "b").lower()])
    raise ValueError(f"{value!r} is not a size like '25MB' or '64KiB'")
