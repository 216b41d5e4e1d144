"""CPU-heavy work kept off the event loop."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

from backstock.domain import bodies

T = TypeVar("T")


async def decoded(decode: Callable[[], T], body: bytes) -> T:
    """``decode()`` of ``body``: right here when it is cheap, on a thread when it could hold
    the event loop (and every other request) for more than about a millisecond."""
    if bodies.costly(body):
        return await asyncio.to_thread(decode)
    return decode()
