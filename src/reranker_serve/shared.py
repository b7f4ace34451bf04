"""State shared by the replicas of one service on Redis (``RERANKER_REDIS_URL``, optional; needs
``reranker-serve[redis]``): the per-key token buckets and the score cache.

N replicas behind one Service otherwise give each key N times its limit and each warm their own
cache. Pointed at one Redis, they enforce one limit per key and share cached scores:

    buckets   one hash per bucket ({tokens, stamp}), read, refilled and taken by one Lua script,
              atomically (several buckets of a request together, or none), on Redis's own clock,
              so replicas with skewed clocks agree; a full bucket expires (it needs no state)
    scores    one string per (partition, model, encoding, query, document) digest, as cache.py
              keys them but with the model identified by its weights' fingerprint (the exact
              logit of a probe pair at start-up) instead of a per-process nonce: replicas of the
              same weights share, different weights never do. Value: the raw score (float64)
              and the pair's tokens. Entries expire after RERANKER_REDIS_CACHE_TTL seconds; the
              Redis's own ``maxmemory`` (with an ``allkeys-lru`` policy) bounds its size.

Redis unreachable (or slower than RERANKER_REDIS_TIMEOUT): nothing fails. Limits fall back to
the server's local buckets and the cache to the local one; the first failure logs a warning,
each fallback counts in ``reranker_redis_fallbacks_total{operation}``, Redis is retried after a
few seconds and its return is logged.
"""

from __future__ import annotations

import struct
import time
from typing import TYPE_CHECKING, Sequence

from loguru import logger

from .cache import CachedScore
from .keys import Bucket

if TYPE_CHECKING:
    from .observability import Metrics

__all__ = ["SharedState"]

# KEYS: the buckets; ARGV: amount, rate, burst of each. Returns {wait, index of the short bucket}
# as strings (Redis truncates Lua numbers to integers). Taken from every bucket or from none.
_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local levels = {}
local wait, short = 0, -1
for i = 1, #KEYS do
  local amount, rate, burst = tonumber(ARGV[3*i-2]), tonumber(ARGV[3*i-1]), tonumber(ARGV[3*i])
  local state = redis.call('HMGET', KEYS[i], 'tokens', 'stamp')
  local level = burst
  if state[1] then
    level = math.min(burst, tonumber(state[1]) + math.max(0, now - tonumber(state[2])) * rate)
  end
  levels[i] = level
  if level < amount and (amount - level) / rate > wait then
    wait, short = (amount - level) / rate, i - 1
  end
end
for i = 1, #KEYS do
  local amount, rate, burst = tonumber(ARGV[3*i-2]), tonumber(ARGV[3*i-1]), tonumber(ARGV[3*i])
  local level = levels[i]
  if wait == 0 then level = level - amount end
  redis.call('HSET', KEYS[i], 'tokens', string.format('%.17g', level), 'stamp', string.format('%.17g', now))
  redis.call('PEXPIRE', KEYS[i], math.ceil((burst - level) / rate * 1000) + 1000)
end
return {string.format('%.17g', wait), tostring(short)}
"""

_VALUE = struct.Struct("<dI")  # raw score (the float the model produced), tokens of the pair
_RETRY_AFTER = 5.0  # seconds without Redis after a failure, so requests do not each wait for its timeout


class SharedState:
    """A Redis connection for buckets and scores, that falls back rather than fails."""

    def __init__(self, url: str, *, prefix: str, timeout: float, cache_ttl: float,
                 metrics: Metrics | None = None) -> None:
        import redis.asyncio
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        # No retries inside the client: a fallback now beats a request waiting on reconnects.
        self._redis = redis.asyncio.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0))
        self._take = self._redis.register_script(_TAKE)
        self.prefix = prefix
        self.cache_ttl = cache_ttl
        self._metrics = metrics
        self._down_until = 0.0  # monotonic time before which Redis is not tried
        self._down = False
        self.url = url

    async def close(self) -> None:
        await self._redis.aclose()

    async def check(self) -> None:
        """At start-up: say in the log whether the shared state is there (a failure is the warning)."""
        try:
            await self._redis.ping()
        except Exception as exc:
            self._failed(None, exc)  # not a fallback yet: no request asked
            return
        logger.info("key limits and the score cache are shared through Redis at {}", self._where())

    # -- availability ---------------------------------------------------------------------------
    def _available(self, operation: str) -> bool:
        if time.monotonic() >= self._down_until:
            return True
        self._fell_back(operation)
        return False

    def _failed(self, operation: str | None, exc: Exception) -> None:
        self._down_until = time.monotonic() + _RETRY_AFTER
        if not self._down:
            self._down = True
            logger.warning("Redis at {} unreachable ({}: {}): limits and the score cache are this server's own "
                           "until it is back (retried every {:g} s)", self._where(), type(exc).__name__, exc,
                           _RETRY_AFTER)
        if operation is not None:
            self._fell_back(operation)

    def _succeeded(self) -> None:
        if self._down:
            self._down = False
            logger.info("Redis at {} reachable again: limits and the score cache are shared again", self._where())

    def _fell_back(self, operation: str) -> None:
        if self._metrics is not None:
            self._metrics.redis_fallbacks.labels(operation).inc()

    def _where(self) -> str:
        # The URL without its password, for logs.
        head, _, tail = self.url.rpartition("@")
        return f"{head.split('//', 1)[0]}//…@{tail}" if head else tail

    # -- buckets ----------------------------------------------------------------------------------
    async def take_all(self, buckets: list[Bucket]) -> tuple[float, int] | None:
        """As RateLimiter.take_all, on Redis; None when Redis cannot be reached."""
        if not self._available("limits"):
            return None
        # {…}: a hash tag, so a request's buckets live in one slot of a Redis Cluster.
        keys = [f"{self.prefix}bucket:{{{b.name.split('/', 1)[0]}}}:{b.name}" for b in buckets]
        args = [str(x) for b in buckets for x in (b.amount, b.rate, b.burst)]
        try:
            wait, short = await self._take(keys=keys, args=args)
        except Exception as exc:  # connection refused, timeout, a Redis without Lua: local limits
            self._failed("limits", exc)
            return None
        self._succeeded()
        return float(wait), int(short)

    # -- scores -----------------------------------------------------------------------------------
    def _key(self, digest: bytes) -> str:
        return f"{self.prefix}score:{digest.hex()}"

    async def get_scores(self, digests: Sequence[bytes]) -> list[CachedScore | None] | None:
        """The cached (score, tokens) of each digest (None: not there); None when Redis cannot
        be reached."""
        if not digests or not self._available("cache"):
            return None
        try:
            values = await self._redis.mget([self._key(d) for d in digests])
        except Exception as exc:
            self._failed("cache", exc)
            return None
        self._succeeded()
        return [None if v is None or len(v) != _VALUE.size else CachedScore(*_VALUE.unpack(v)) for v in values]

    async def put_scores(self, items: Sequence[tuple[bytes, CachedScore]]) -> None:
        if not items or not self._available("cache"):
            return
        ttl = max(1, round(self.cache_ttl))
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for digest, value in items:
                    pipe.set(self._key(digest), _VALUE.pack(value.score, value.tokens), ex=ttl)
                await pipe.execute()
        except Exception as exc:
            self._failed("cache", exc)
            return
        self._succeeded()
