"""The time the batcher reads: now, and a wait for a future bounded by a deadline.

One owner for "what time is it" in the scheduler, so its tests can drive time (a fake clock
advanced by a fake model) instead of sleeping and hoping a loaded machine keeps up. The real
clock is ``time.perf_counter`` and ``asyncio.wait_for``.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol, TypeVar

__all__ = ["Clock", "MonotonicClock"]

T = TypeVar("T")


class Clock(Protocol):
    def now(self) -> float:
        """Seconds on a monotonic scale (only differences mean anything)."""

    async def wait_for(self, future: asyncio.Future[T], timeout: float | None) -> T:
        """``future``'s result; TimeoutError (and ``future`` cancelled) once ``timeout`` seconds pass."""


class MonotonicClock:
    """The wall: what the server runs on."""

    def now(self) -> float:
        return time.perf_counter()

    async def wait_for(self, future: asyncio.Future[T], timeout: float | None) -> T:
        return await asyncio.wait_for(future, timeout)
