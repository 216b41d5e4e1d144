"""CPU-heavy work kept off the event loop."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

from backstock.domain import bodies

T = TypeVar("T")


async def decoded(decode: Callable[[], T], body: bytes) -> T:
    """``decode()`` of ``body``: right here, or on a thread for a body over 256 KB
    (``bodies.costly``), where the rare decode that runs past the interpreter's switch
    interval (5 ms) then lets the event loop in meanwhile. Below that, a thread, holding the
    GIL while it decodes, would stall the loop as long."""
    if bodies.costly(body):
        return await asyncio.to_thread(decode)
    return decode()
