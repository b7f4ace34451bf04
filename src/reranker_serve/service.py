"""The one scoring call behind every route: ``Reranker.rerank(RerankQuery) -> RerankResult``.

Dialect modules translate their request into a ``RerankQuery`` and the ``RerankResult`` back;
validation that does not depend on the wire format happens here, in a fixed order, so every
dialect rejects the same requests for the same reasons:

    query non-empty → documents non-empty → documents ≤ MAX_DOCUMENTS → top_n ≥ 0
    → max_tokens_per_doc ≥ 1 → 1 ≤ max_chunks_per_doc ≤ 100 → `model` is served → it is loaded
    → an instruction only for models that take one
    → score: the score cache (cache.py, in the caller's partition; then Redis, shared.py) for
      pairs already scored; the rest tokenized → the request's tokens ≤ RERANKER_MAX_REQUEST_TOKENS
      → the key's pair and token limits (keys.py) → queue, forward (a chunked document scores
      as its best window) → rank

What a request costs is counted here, once, in ``TokenUsage`` (``RerankResult.usage``): every
dialect that reports usage reads it from there.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Sequence

from .cache import CachedScore, ScoreCache
from .config import MAX_CHUNKS_PER_DOC
from .engine import Engine
from .errors import ErrorKind, RerankError
from .families import FAMILIES
from .keys import ApiKey, KeyLimits, Priority
from .media import ImagePolicy, MediaDocument, has_media, resolve
from .models import EncodeOptions, Pair
from .registry import ModelRegistry
from .tracing import EngineTiming, Tracing

if TYPE_CHECKING:
    from .shared import SharedState

__all__ = ["Ranked", "RerankQuery", "RerankResult", "Reranker", "TokenUsage"]


@dataclass(frozen=True, slots=True, kw_only=True)
class RerankQuery:
    query: str | MediaDocument  # an image query too, for multimodal models (media.py)
    documents: Sequence[str | MediaDocument]
    top_n: int | None = None  # None, 0 or more than len(documents): all
    return_documents: bool = False
    raw_scores: bool = False
    model: str | None = None
    truncate: bool = True
    truncation_direction: Literal["right", "left"] = "right"
    max_tokens_per_doc: int | None = None
    max_chunks_per_doc: int | None = None  # None: the server's RERANKER_MAX_CHUNKS_PER_DOC
    chunk_overlap: int | None = None  # tokens shared by consecutive windows; None: RERANKER_CHUNK_OVERLAP
    instruction: str | None = None  # None: the model's default (LLM rerankers only)
    priority: Priority = "interactive"  # the order the batcher takes pairs in
    use_cache: bool = True  # False: the score cache is neither read nor written (Cache-Control: no-cache)
    # Who asks (None: a server without keys): its cache partition and the limits its work is charged to.
    tenant: ApiKey | None = None


@dataclass(frozen=True, slots=True)
class Ranked:
    index: int  # position in the request's documents
    score: float
    document: str | MediaDocument | None = None


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


@dataclass(frozen=True, slots=True)
class RerankResult:
    model: str
    results: list[Ranked]
    usage: TokenUsage
    queue_time: float = 0.0
    inference_time: float = 0.0

    @property
    def total_tokens(self) -> int:
        return self.usage.total_tokens


def non_finite_message(dtype_name: str, backend: str) -> str:
    """What to say when a model scored NaN or inf: a remedy the configuration does not already follow."""
    message = f"the model produced non-finite scores ({backend}, {dtype_name})"
    remedies = []
    if dtype_name != "float32":
        remedies.append("set RERANKER_DTYPE=float32")  # fp16/bf16 overflow is the usual cause
    if backend != "torch":
        remedies.append("set RERANKER_BACKEND=torch")
    if remedies:
        return f"{message}; if this repeats, {' or '.join(remedies)}"
    # float32 on torch: not a precision problem the settings can fix.
    return f"{message}, in float32 on torch: the model's weights or its inputs are broken; please report it"


def _invalid(message: str) -> RerankError:
    return RerankError(ErrorKind.VALIDATION, message)


class Reranker:
    """Ranks with the served models; which model answers is the registry's business."""

    def __init__(self, registry: ModelRegistry, *, tracing: Tracing | None = None, limits: KeyLimits | None = None,
                 shared: SharedState | None = None) -> None:
        self.registry = registry
        self.settings = registry.settings
        self.metrics = registry.metrics
        mb = self.settings.cache_mb
        self.cache = ScoreCache(max_bytes=int(mb * 1024 * 1024), metrics=self.metrics) if mb else None
        self.tracing = tracing
        self.limits = limits
        self.images = ImagePolicy.of(self.settings)
        # Redis (RERANKER_REDIS_URL): a second cache tier shared by replicas; off with the cache.
        self.shared = shared if self.cache is not None else None
        # Pairs (cache keys) being computed now and the futures their scores will be set on,
        # by the priority of the request computing them.
        self._inflight: dict[str, dict[bytes, asyncio.Future[CachedScore]]] = {"interactive": {}, "batch": {}}

    async def rerank(self, q: RerankQuery) -> RerankResult:
        entered = time.time_ns() if self.tracing is not None else 0
        if isinstance(q.query, str) and not q.query.strip():
            raise _invalid("query must not be empty")
        n = len(q.documents)
        if n == 0:
            raise _invalid("documents must not be empty: send at least one document")
        limit = self.settings.max_documents
        if n > limit:
            raise RerankError(
                ErrorKind.PAYLOAD_TOO_LARGE,
                f"too many documents: {n} sent, at most {limit} allowed (RERANKER_MAX_DOCUMENTS)",
            )
        if q.top_n is not None and q.top_n < 0:
            raise _invalid(f"top_n must be 0 or more (0 means all documents), got {q.top_n}")
        if q.max_tokens_per_doc is not None and q.max_tokens_per_doc < 1:
            raise _invalid(f"max_tokens_per_doc must be at least 1, got {q.max_tokens_per_doc}")
        if q.max_chunks_per_doc is not None and not 1 <= q.max_chunks_per_doc <= MAX_CHUNKS_PER_DOC:
            raise _invalid(
                f"max_chunks_per_doc must be between 1 and {MAX_CHUNKS_PER_DOC}, got {q.max_chunks_per_doc}"
            )
        engine = self.registry.engine(q.model)
        model = engine.model
        if q.instruction is not None and not model.takes_instruction:
            raise _invalid(f"model {model.name!r} ({model.family} reranker) takes no instruction; leave it out")
        if has_media(q.query, q.documents):  # fetched, checked and decoded off the event loop (media.py)
            record = FAMILIES.get(model.family)
            query, documents = await resolve(q.query, q.documents, policy=self.images, model=model.name,
                                             family=model.family, multimodal=record is not None and record.multimodal)
            q = dataclasses.replace(q, query=query, documents=documents)

        overrides: dict[str, object] = dict(
            truncate=q.truncate, truncation_direction=q.truncation_direction, max_doc_tokens=q.max_tokens_per_doc,
            instruction=q.instruction,
        )
        if q.max_chunks_per_doc is not None:
            overrides["max_chunks"] = q.max_chunks_per_doc
        if q.chunk_overlap is not None:
            overrides["chunk_overlap"] = q.chunk_overlap
        options = engine.encode_options(**overrides)
        scored = await self._score(engine, q, options)
        scored_ns = time.time_ns() if self.tracing is not None else 0
        usage = scored.usage
        if scored.timing is None:  # all from the cache: nothing queued or run, no time to observe
            self.metrics.documents.labels(model.name).inc(n)
        else:
            self.metrics.observe_request(model.name, documents=n, tokens=usage.computed_tokens,
                                         queue_time=scored.queue_time, inference_time=scored.inference_time)
        raw = scored.raw
        if any(not math.isfinite(x) for x in raw):
            raise RerankError(
                ErrorKind.BACKEND,
                non_finite_message(model.dtype_name, model.backend),
            )
        scores = raw if q.raw_scores else [model.activate(x) for x in raw]
        # sorted() is stable: equal scores keep the order the client sent.
        order = sorted(range(n), key=lambda i: -scores[i])
        if q.top_n:
            order = order[: q.top_n]
        results = [
            Ranked(i, scores[i], q.documents[i] if q.return_documents else None) for i in order
        ]
        if self.tracing is not None:
            self.tracing.record(entered_ns=entered, engine=scored.timing, rank=(scored_ns, time.time_ns()),
                                attributes={"reranker.model": model.name, "reranker.documents": n,
                                            "reranker.tokens": usage.computed_tokens,
                                            "reranker.cache.hits": scored.hits,
                                            "reranker.cache.misses": n - scored.hits})
        return RerankResult(
            model=model.name,
            results=results,
            usage=usage,
            queue_time=scored.queue_time,
            inference_time=scored.inference_time,
        )

    async def _score(self, engine: Engine, q: RerankQuery, options: EncodeOptions) -> _Scores:
        """Raw scores of every document: those in the caller's score cache from it (locally,
        then on Redis), those another of its requests is computing right now from that
        computation, the rest from the engine (each distinct document once), which are then
        cached."""
        cache = self.cache if q.use_cache else None
        n = len(q.documents)
        if cache is None:
            pairs = await engine.encode(q.query, q.documents, options)
            total = sum(len(pair) for pair in pairs)
            await self._admit(engine, q, total=total, pairs=len(pairs), tokens=total)
            computed = await self._engine_score(engine, pairs, n, priority=q.priority)
            return _Scores(raw=computed.raw, usage=TokenUsage(total), timing=computed.timing)
        partition = q.tenant.cache_partition if q.tenant is not None else ""
        keys = cache.keys(engine, options, q.query, q.documents, partition=partition)
        cached = cache.get_many(keys)
        shared = self.shared if engine.fingerprint is not None else None
        stable: dict[bytes, bytes] = {}  # local key -> Redis key, for the local misses
        if shared is not None and None in cached:
            missing = [i for i, value in enumerate(cached) if value is None]
            digests = cache.keys(engine, options, q.query, [q.documents[i] for i in missing], partition=partition,
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
            return _Scores(raw=[v.score for v in cached if v is not None], usage=TokenUsage(total, total), hits=hits)
        # Every pair not cached is tokenized, those another request computes too: the request's
        # cost (the token cap, usage) does not depend on what else is running.
        order = list(todo)
        pairs = await engine.encode(q.query, [q.documents[todo[key]] for key in order], options)
        by_key: dict[bytes, list[Pair]] = {key: [] for key in order}
        for pair in pairs:
            by_key[order[pair.doc]].append(pair)
        cost = {key: sum(len(p) for p in by_key[key]) for key in order}
        total = sum(v.tokens if v is not None else cost[key] for key, v in zip(keys, cached))
        # Pairs in flight (a retry, or two chat turns at once): wait for them rather than
        # computing them twice; computed here, they are announced to later requests. An
        # interactive request does not wait on batch work (it would inherit its priority).
        inflight = self._inflight["interactive"] if q.priority == "interactive" else {
            **self._inflight["batch"], **self._inflight["interactive"]}
        theirs = {key: inflight[key] for key in order if key in inflight}
        mine = [key for key in order if key not in theirs]
        await self._admit(engine, q, total=total, pairs=sum(len(by_key[k]) for k in mine),
                          tokens=sum(cost[k] for k in mine))
        fresh: dict[bytes, CachedScore] = {}
        computed_tokens, timing = 0, None
        while mine or theirs:
            if mine:
                values, computed = await self._compute(cache, engine, q, mine, by_key, cost, stable)
                computed_tokens += computed.usage.total_tokens
                timing = timing or computed.timing
                fresh.update(zip(mine, values))
            waiting, theirs, mine = theirs, {}, []
            for key, future in waiting.items():
                try:
                    fresh[key] = await asyncio.shield(future)
                except asyncio.CancelledError:
                    if not future.cancelled():
                        raise  # this request itself was cancelled
                    mine.append(key)  # the request computing it failed or left: compute it here
        return _Scores(
            raw=[fresh[key].score if value is None else value.score for key, value in zip(keys, cached)],
            usage=TokenUsage(total, total - computed_tokens), hits=hits, timing=timing,
        )

    async def _admit(self, engine: Engine, q: RerankQuery, *, total: int, pairs: int, tokens: int) -> None:
        """The request's cost against the per-request token cap, then its work (the pairs and
        tokens to compute) against its key's limits: 413/429 before anything is queued."""
        cap = self.settings.max_request_tokens or self.settings.max_documents * engine.model.max_length
        if total > cap:
            setting = "RERANKER_MAX_REQUEST_TOKENS" if self.settings.max_request_tokens else (
                "RERANKER_MAX_REQUEST_TOKENS, by default RERANKER_MAX_DOCUMENTS x the model's window")
            raise RerankError(
                ErrorKind.PAYLOAD_TOO_LARGE,
                f"this request costs {total} model tokens (every window of a chunked document counts), more than the "
                f"{cap} one request may cost ({setting}); send fewer or shorter documents, or fewer chunks "
                "(max_chunks_per_doc)",
            )
        if q.tenant is not None and self.limits is not None:
            await self.limits.charge(q.tenant, pairs=pairs, tokens=tokens)

    async def _compute(self, cache: ScoreCache, engine: Engine, q: RerankQuery, keys: list[bytes],
                       by_key: dict[bytes, list[Pair]], cost: dict[bytes, int],
                       stable: dict[bytes, bytes]) -> tuple[list[CachedScore], _Scores]:
        """Score the documents of ``keys`` (their pairs in ``by_key``, their tokens in ``cost``),
        announcing them as in flight meanwhile; cache their scores (locally, and on Redis where
        ``stable`` maps them). Returns the scores as cached, and the engine call."""
        loop = asyncio.get_running_loop()
        owned = {key: loop.create_future() for key in keys}
        inflight = self._inflight[q.priority]
        inflight.update(owned)
        index = {key: i for i, key in enumerate(keys)}
        pairs = [dataclasses.replace(p, doc=index[key]) for key in keys for p in by_key[key]]
        try:
            computed = await self._engine_score(engine, pairs, len(keys), priority=q.priority)
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

    @staticmethod
    async def _engine_score(engine: Engine, pairs: Sequence[Pair], documents: int, *, priority: str) -> _Scores:
        started = time.time_ns()  # two clock reads (~50 ns): the engine call's place in a trace
        scored = await engine.run(pairs, documents, priority=priority)
        timing = EngineTiming(started, time.time_ns(), scored.queue_time, scored.inference_time)
        return _Scores(raw=scored.raw, usage=TokenUsage(scored.tokens), timing=timing)


@dataclass(frozen=True, slots=True, kw_only=True)
class _Scores:
    """A request's raw scores, wherever they came from."""

    raw: list[float]
    usage: TokenUsage
    hits: int = 0  # documents answered from the score cache
    timing: EngineTiming | None = None  # the engine call; None: every score came from the cache

    @property
    def queue_time(self) -> float:
        return self.timing.queue_time if self.timing else 0.0

    @property
    def inference_time(self) -> float:
        return self.timing.inference_time if self.timing else 0.0
