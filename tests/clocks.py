"""A clock that tests move: what the batcher reads instead of the wall (reranker_serve.clock)."""

from __future__ import annotations

import asyncio
import threading
from typing import TypeVar

T = TypeVar("T")


class FakeClock:
    """Time stands still until ``advance`` (from any thread: a fake model advances it by the
    seconds its forward pass "takes"); waits whose deadline it passes time out then."""

    def __init__(self, start: float = 1000.0) -> None:
        self._now = start
        self._lock = threading.Lock()
        self._timers: list[tuple[float, asyncio.AbstractEventLoop, asyncio.Future[None]]] = []

    def now(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += seconds
            due = [t for t in self._timers if t[0] <= self._now]
            self._timers = [t for t in self._timers if t[0] > self._now]
        for _, loop, expired in due:
            loop.call_soon_threadsafe(lambda f=expired: f.done() or f.set_result(None))

    async def wait_for(self, future: asyncio.Future[T], timeout: float | None) -> T:
        if timeout is None:
            return await future
        loop = asyncio.get_running_loop()
        expired: asyncio.Future[None] = loop.create_future()
        with self._lock:
            self._timers.append((self._now + timeout, loop, expired))
        try:
            await asyncio.wait({future, expired}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            with self._lock:
                self._timers = [t for t in self._timers if t[2] is not expired]
            if not future.done():  # cancelled: like asyncio.wait_for, cancel what it waited on
                future.cancel()
        # Fake time jumps: a result and the deadline can land in one turn of the loop. The
        # deadline passed first if the clock passed it (results are delivered after the pass).
        if expired.done():
            future.cancel()
            raise TimeoutError
        return future.result()
