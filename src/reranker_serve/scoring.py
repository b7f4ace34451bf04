"""A request's raw scores, wherever they come from: the score cache's owner at request time.

``CachedScoring.score`` answers each document of a request from, in this order,

    the score cache      this process's (cache.py), in the caller's partition
    Redis                the replicas' shared tier (shared.py), for an engine with a fingerprint
    a pair in flight     another request computing the same pair right now (single-flight): its
                         computation is awaited, not repeated; one that fails or leaves hands
                         the pairs back and they are computed here
    the engine           the rest, each distinct document once; then cached (both tiers)

and counts what that cost in ``TokenUsage``, the one count every dialect's usage reports. What
the request may cost is not decided here: the caller's ``admit`` (the service's token cap and
key limits) sees the cost after tokenizing and before anything is queued.

The carriers a score travels in, each with a meaning of its own:

    batcher.Scored       one job's per-pair logits and its queue/inference split (the batcher's)
    engine.EngineScores  one engine call: per-document logits (a chunked document's best
                         window), the tokens fed, and the call's wall-clock span and split
    Scores (here)        one request's per-document logits with their cost (``TokenUsage``),
                         cache hits and the first engine call (None: all from the cache)
    service.RerankResult the ranked answer a dialect renders

The cache key is built by ``ScoreCache.keys`` alone, and a pair's token cost by
``engine.token_cost`` alone: a new input to either (an image digest, image tokens) changes one
function.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, Sequence

from .cache import CachedScore, ScoreCache
from .engine import Engine, EngineScores, token_cost
from .models import EncodeOptions, Pair

if TYPE_CHECKING:
    from .observability import Metrics
    from .shared import SharedState

__all__ = ["Admit", "CachedScoring", "Scores", "TokenUsage"]


@dataclass(frozen=True, slots=True)
class TokenUsage:
    """What a request's pairs cost, the one count every dialect's usage reports.

    ``total_tokens`` counts every (query, document) pair of the request, every window of a
    chunked document, special tokens included, whether computed for it or not: a cached score
    costs what computing it did, so usage-based accounting never sees a free request.
    ``cached_tokens`` is the part that was not computed for it (the caller's score cache, a pair
    another of its requests was computing, a document repeated in the request): OpenAI's
    ``prompt_tokens_details.cached_tokens``. ``computed_tokens`` were fed to the model
    (``X-Compute-Tokens``).
    """

    total_tokens: int
    cached_tokens: int = 0

    @property
    def computed_tokens(self) -> int:
        return self.total_tokens - self.cached_tokens


@dataclass(frozen=True, slots=True, kw_only=True)
class Scores:
    """A request's raw scores, one per document, wherever they came from."""

    raw: list[float]
    usage: TokenUsage
    hits: int = 0  # documents answered from the score cache
    engine: EngineScores | None = None  # the (first) engine call; None: every score came from the cache

    @property
    def queue_time(self) -> float:
        return self.engine.queue_time if self.engine else 0.0

    @property
    def inference_time(self) -> float:
        return self.engine.inference_time if self.engine else 0.0


class Admit(Protocol):
    """The caller's check of a request's cost before anything is queued: ``total`` tokens the
    request costs, ``pairs`` and ``tokens`` it will compute. Raises to refuse it."""

    async def __call__(self, *, total: int, pairs: int, tokens: int) -> None: ...


class CachedScoring:
    """Scores through the score cache (None: off) and its Redis tier, one computation per pair in flight."""

    def __init__(self, cache: ScoreCache | None, *, shared: SharedState | None = None) -> None:
        self.cache = cache
        # Redis (RERANKER_REDIS_URL): a second cache tier shared by replicas; off with the cache.
        self.shared = shared if cache is not None else None
        # Pairs (cache keys) being computed now and the futures their scores will be set on,
        # by the priority of the request computing them.
        self._inflight: dict[str, dict[bytes, asyncio.Future[CachedScore]]] = {"interactive": {}, "batch": {}}

    @classmethod
    def from_settings(cls, cache_mb: float, *, metrics: Metrics, shared: SharedState | None = None) -> CachedScoring:
        """RERANKER_CACHE_MB of score cache (0: none)."""
        cache = ScoreCache(max_bytes=int(cache_mb * 1024 * 1024), metrics=metrics) if cache_mb else None
        return cls(cache, shared=shared)

    async def score(self, engine: Engine, query: str, documents: Sequence[str], options: EncodeOptions, *,
                    admit: Admit, priority: str = "interactive", partition: str = "",
                    use_cache: bool = True) -> Scores:
        """Raw scores of every document: those in the caller's score cache (``partition``) from it
        (locally, then on Redis), those another of its requests is computing right now from that
        computation, the rest from the engine (each distinct document once), which are then
        cached. ``use_cache=False``: the cache is neither read nor written."""
        cache = self.cache if use_cache else None
        n = len(documents)
        if cache is None:
            pairs = await engine.encode(query, documents, options)
            total = token_cost(pairs)
            await admit(total=total, pairs=len(pairs), tokens=total)
            computed = await engine.run(pairs, n, priority=priority)
            return Scores(raw=computed.raw, usage=TokenUsage(total), engine=computed)
        keys = cache.keys(engine, options, query, documents, partition=partition)
        cached = cache.get_many(keys)
        shared = self.shared if engine.fingerprint is not None else None
        stable: dict[bytes, bytes] = {}  # local key -> Redis key, for the local misses
        if shared is not None and None in cached:
            missing = [i for i, value in enumerate(cached) if value is None]
            digests = cache.keys(engine, options, query, [documents[i] for i in missing], partition=partition,
                                 stable=True)
            stable = {keys[i]: d for i, d in zip(missing, digests)}
            found = await shared.get_scores(digests)
            if found is not None:
                for i, value in zip(missing, found):
                    if value is not None:
                        cached[i] = value
                cache.put_many([(keys[i], v) for i, v in zip(missing, found) if v is not None])
        todo: dict[bytes, int] = {}  # key -> the first document that has it
        for i, (key, value) in enumerate(zip(keys, cached)):
            if value is None and key not in todo:
                todo[key] = i
        hits = n - sum(value is None for value in cached)
        cache.count(engine.model.name, hits=hits, misses=n - hits)
        if not todo:  # every score from the cache: the whole cost is cached
            total = sum(v.tokens for v in cached if v is not None)
            return Scores(raw=[v.score for v in cached if v is not None], usage=TokenUsage(total, total), hits=hits)
        # Every pair not cached is tokenized, those another request computes too: the request's
        # cost (the token cap, usage) does not depend on what else is running.
        order = list(todo)
        pairs = await engine.encode(query, [documents[todo[key]] for key in order], options)
        by_key: dict[bytes, list[Pair]] = {key: [] for key in order}
        for pair in pairs:
            by_key[order[pair.doc]].append(pair)
        cost = {key: token_cost(by_key[key]) for key in order}
        total = sum(v.tokens if v is not None else cost[key] for key, v in zip(keys, cached))
        # Pairs in flight (a retry, or two chat turns at once): wait for them rather than
        # computing them twice; computed here, they are announced to later requests. An
        # interactive request does not wait on batch work (it would inherit its priority).
        inflight = self._inflight["interactive"] if priority == "interactive" else {
            **self._inflight["batch"], **self._inflight["interactive"]}
        theirs = {key: inflight[key] for key in order if key in inflight}
        mine = [key for key in order if key not in theirs]
        await admit(total=total, pairs=sum(len(by_key[k]) for k in mine), tokens=sum(cost[k] for k in mine))
        fresh: dict[bytes, CachedScore] = {}
        computed_tokens, first = 0, None
        while mine or theirs:
            if mine:
                values, computed = await self._compute(cache, engine, mine, by_key, cost, stable, priority=priority)
                computed_tokens += computed.tokens
                first = first or computed
                fresh.update(zip(mine, values))
            waiting, theirs, mine = theirs, {}, []
            for key, future in waiting.items():
                try:
                    fresh[key] = await asyncio.shield(future)
                except asyncio.CancelledError:
                    if not future.cancelled():
                        raise  # this request itself was cancelled
                    mine.append(key)  # the request computing it failed or left: compute it here
        return Scores(
            raw=[fresh[key].score if value is None else value.score for key, value in zip(keys, cached)],
            usage=TokenUsage(total, total - computed_tokens), hits=hits, engine=first,
        )

    async def _compute(self, cache: ScoreCache, engine: Engine, keys: list[bytes], by_key: dict[bytes, list[Pair]],
                       cost: dict[bytes, int], stable: dict[bytes, bytes], *,
                       priority: str) -> tuple[list[CachedScore], EngineScores]:
        """Score the documents of ``keys`` (their pairs in ``by_key``, their tokens in ``cost``),
        announcing them as in flight meanwhile; cache their scores (locally, and on Redis where
        ``stable`` maps them). Returns the scores as cached, and the engine call."""
        loop = asyncio.get_running_loop()
        owned = {key: loop.create_future() for key in keys}
        inflight = self._inflight[priority]
        inflight.update(owned)
        index = {key: i for i, key in enumerate(keys)}
        pairs = [dataclasses.replace(p, doc=index[key]) for key in keys for p in by_key[key]]
        try:
            computed = await engine.run(pairs, len(keys), priority=priority)
        except BaseException:
            for future in owned.values():
                future.cancel()  # the requests waiting for them compute them themselves
            raise
        finally:
            for key, future in owned.items():
                if inflight.get(key) is future:
                    del inflight[key]
        values = [CachedScore(raw, cost[key]) for key, raw in zip(keys, computed.raw)]
        for future, value in zip(owned.values(), values):
            future.set_result(value)
        # Non-finite scores are an error the service reports; they are not kept.
        kept = [(key, value) for key, value in zip(keys, values) if math.isfinite(value.score)]
        cache.put_many(kept)
        if self.shared is not None and stable:
            await self.shared.put_scores([(stable[key], value) for key, value in kept if key in stable])
        return values, computed
