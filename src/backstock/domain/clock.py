"""Time as integer microseconds since the epoch (UTC), the unit every table stores."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from functools import lru_cache


def now_us() -> int:
    return time.time_ns() // 1000


@lru_cache(maxsize=8192)
def to_iso(us: int | None) -> str | None:
    """ISO 8601 with an explicit UTC offset; cached: a job's variants share their timestamps."""
    if us is None:
        return None
    return datetime.fromtimestamp(us / 1_000_000, UTC).isoformat(timespec="microseconds")


def from_datetime(value: datetime) -> int:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return int(value.timestamp() * 1_000_000)
