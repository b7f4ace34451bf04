"""The one scoring call behind every route: ``Reranker.rerank(RerankQuery) -> RerankResult``.

Dialect modules translate their request into a ``RerankQuery`` and the ``RerankResult`` back;
validation that does not depend on the wire format happens here, in a fixed order, so every
dialect rejects the same requests for the same reasons:

    query non-empty → documents non-empty → documents ≤ MAX_DOCUMENTS → top_n ≥ 0
    → max_tokens_per_doc ≥ 1 → 1 ≤ max_chunks_per_doc ≤ 100 → `model` is served → it is loaded
    → an instruction only for models that take one
    → score (the score cache, cache.py, for pairs already scored; the engine for the rest:
      tokenize, queue, forward; a chunked document scores as its best window) → rank
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass
from typing import Literal, Sequence

from .cache import ScoreCache
from .config import MAX_CHUNKS_PER_DOC
from .engine import Engine
from .errors import ErrorKind, RerankError
from .keys import Priority
from .models import EncodeOptions
from .registry import ModelRegistry
from .tracing import EngineTiming, Tracing

__all__ = ["Ranked", "RerankQuery", "RerankResult", "Reranker"]


@dataclass(frozen=True, slots=True, kw_only=True)
class RerankQuery:
    query: str
    documents: Sequence[str]
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


@dataclass(frozen=True, slots=True)
class Ranked:
    index: int  # position in the request's documents
    score: float
    document: str | None = None


@dataclass(frozen=True, slots=True)
class RerankResult:
    model: str
    results: list[Ranked]
    total_tokens: int
    queue_time: float = 0.0
    inference_time: float = 0.0


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

    def __init__(self, registry: ModelRegistry, *, tracing: Tracing | None = None) -> None:
        self.registry = registry
        self.settings = registry.settings
        self.metrics = registry.metrics
        mb = self.settings.cache_mb
        self.cache = ScoreCache(max_bytes=int(mb * 1024 * 1024), metrics=self.metrics) if mb else None
        self.tracing = tracing
        # Pairs (cache keys) being computed now and the futures their raw scores will be set on,
        # by the priority of the request computing them.
        self._inflight: dict[str, dict[bytes, asyncio.Future[float]]] = {"interactive": {}, "batch": {}}

    async def rerank(self, q: RerankQuery) -> RerankResult:
        entered = time.time_ns() if self.tracing is not None else 0
        if not q.query.strip():
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
        if scored.timing is None:  # all from the cache: nothing queued or run, no time to observe
            self.metrics.documents.labels(model.name).inc(n)
        else:
            self.metrics.observe_request(model.name, documents=n, tokens=scored.tokens, queue_time=scored.queue_time,
                                         inference_time=scored.inference_time)
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
                                            "reranker.tokens": scored.tokens, "reranker.cache.hits": scored.hits,
                                            "reranker.cache.misses": n - scored.hits})
        return RerankResult(
            model=model.name,
            results=results,
            total_tokens=scored.tokens,
            queue_time=scored.queue_time,
            inference_time=scored.inference_time,
        )

    async def _score(self, engine: Engine, q: RerankQuery, options: EncodeOptions) -> _Scores:
        """Raw scores of every document: those in the score cache from it, those another request
        is computing right now from that computation, the rest from the engine (each distinct
        document once), which are then cached."""
        cache = self.cache if q.use_cache else None
        if cache is None:
            return await self._engine_score(engine, q.query, q.documents, options, priority=q.priority)
        keys = cache.keys(engine, options, q.query, q.documents)
        cached = cache.get_many(keys)
        todo: dict[bytes, int] = {}  # key -> the first document that has it
        for i, (key, value) in enumerate(zip(keys, cached)):
            if value is None and key not in todo:
                todo[key] = i
        hits = len(keys) - sum(value is None for value in cached)
        cache.count(engine.model.name, hits=hits, misses=len(keys) - hits)
        fresh: dict[bytes, float] = {}
        tokens, timing = 0, None
        # Pairs in flight (a retry, or two chat turns at once): wait for them rather than
        # computing them twice; computed here, they are announced to later requests. An
        # interactive request does not wait on batch work (it would inherit its priority).
        inflight = self._inflight["interactive"] if q.priority == "interactive" else {
            **self._inflight["batch"], **self._inflight["interactive"]}
        theirs = {key: inflight[key] for key in todo if key in inflight}
        mine = [key for key in todo if key not in theirs]
        while mine or theirs:
            if mine:
                computed = await self._compute(cache, engine, q, options, [(key, todo[key]) for key in mine])
                tokens += computed.tokens
                timing = timing or computed.timing
                fresh.update(zip(mine, computed.raw))
            waiting, theirs, mine = theirs, {}, []
            for key, future in waiting.items():
                try:
                    fresh[key] = await asyncio.shield(future)
                except asyncio.CancelledError:
                    if not future.cancelled():
                        raise  # this request itself was cancelled
                    mine.append(key)  # the request computing it failed or left: compute it here
        if not fresh:
            return _Scores(raw=cached, tokens=0, hits=hits)  # type: ignore[arg-type]
        return _Scores(
            raw=[fresh[key] if value is None else value for key, value in zip(keys, cached)], tokens=tokens,
            hits=hits, timing=timing,
        )

    async def _compute(self, cache: ScoreCache, engine: Engine, q: RerankQuery, options: EncodeOptions,
                       pairs: list[tuple[bytes, int]]) -> _Scores:
        """Score the documents of ``pairs`` (key, index), announcing them as in flight meanwhile;
        cache their scores."""
        loop = asyncio.get_running_loop()
        owned = {key: loop.create_future() for key, _ in pairs}
        inflight = self._inflight[q.priority]
        inflight.update(owned)
        try:
            computed = await self._engine_score(engine, q.query, [q.documents[i] for _, i in pairs], options,
                                                priority=q.priority)
        except BaseException:
            for future in owned.values():
                future.cancel()  # the requests waiting for them compute them themselves
            raise
        finally:
            for key, future in owned.items():
                if inflight.get(key) is future:
                    del inflight[key]
        for future, value in zip(owned.values(), computed.raw):
            future.set_result(value)
        # Non-finite scores are an error the service reports; they are not kept.
        cache.put_many([(key, value) for key, value in zip(owned, computed.raw) if math.isfinite(value)])
        return computed

    @staticmethod
    async def _engine_score(engine: Engine, query: str, documents: Sequence[str], options: EncodeOptions, *,
                            priority: str) -> _Scores:
        started = time.time_ns()  # two clock reads (~50 ns): the engine call's place in a trace
        scored = await engine.score(query, documents, options, priority=priority)
        timing = EngineTiming(started, time.time_ns(), scored.queue_time, scored.inference_time)
        return _Scores(raw=scored.raw, tokens=scored.tokens, timing=timing)


@dataclass(frozen=True, slots=True, kw_only=True)
class _Scores:
    """A request's raw scores, wherever they came from."""

    raw: list[float]
    tokens: int  # fed to the model for this request (cache hits cost none)
    hits: int = 0  # documents answered from the score cache
    timing: EngineTiming | None = None  # the engine call; None: every score came from the cache

    @property
    def queue_time(self) -> float:
        return self.timing.queue_time if self.timing else 0.0

    @property
    def inference_time(self) -> float:
        return self.timing.inference_time if self.timing else 0.0
