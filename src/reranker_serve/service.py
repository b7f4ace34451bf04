"""The one scoring call behind every route: ``RerankService.rerank(RerankQuery) -> RerankResult``.

Dialect modules translate their request into a ``RerankQuery`` and the ``RerankResult`` back.
The service owns two of the call's three jobs; the third has its own module:

    validation   (``_validate``, here) what does not depend on the wire format, in a fixed
                 order, so every dialect rejects the same requests for the same reasons
    scores       (``CachedScoring``, scoring.py) the score cache, Redis, pairs in flight, the
                 engine; it asks the service's ``_admit`` what a request may cost
    ranking      (``_rank``, here) activation, order, top_n, metrics and the trace's spans

    query non-empty → documents non-empty → documents ≤ MAX_DOCUMENTS → top_n ≥ 0
    → max_tokens_per_doc ≥ 1 → 1 ≤ max_chunks_per_doc ≤ 100 → `model` is served → it is loaded
    → an instruction only for models that take one
    → score: the score cache (cache.py, in the caller's partition; then Redis, shared.py) for
      pairs already scored; the rest tokenized → the request's tokens ≤ RERANKER_MAX_REQUEST_TOKENS
      → the key's pair and token limits (keys.py) → queue, forward (a chunked document scores
      as its best window) → rank

What a request costs is counted once, in ``TokenUsage`` (scoring.py, ``RerankResult.usage``):
every dialect that reports usage reads it from there.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Literal, Sequence

from .config import MAX_CHUNKS_PER_DOC
from .engine import Engine
from .errors import ErrorKind, RerankError
from .keys import ApiKey, KeyLimits, Priority
from .registry import ModelRegistry
from .scoring import CachedScoring, Scores, TokenUsage
from .tracing import Tracing

if TYPE_CHECKING:
    from .shared import SharedState

__all__ = ["Ranked", "RerankQuery", "RerankResult", "RerankService", "TokenUsage"]


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
    # Who asks (None: a server without keys): its cache partition and the limits its work is charged to.
    tenant: ApiKey | None = None


@dataclass(frozen=True, slots=True)
class Ranked:
    index: int  # position in the request's documents
    score: float
    document: str | None = None


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


class RerankService:
    """Ranks with the served models; which model answers is the registry's business."""

    def __init__(self, registry: ModelRegistry, *, tracing: Tracing | None = None, limits: KeyLimits | None = None,
                 shared: SharedState | None = None) -> None:
        self.registry = registry
        self.settings = registry.settings
        self.metrics = registry.metrics
        self.scoring = CachedScoring.from_settings(self.settings.cache_mb, metrics=self.metrics, shared=shared)
        self.tracing = tracing
        self.limits = limits

    async def rerank(self, q: RerankQuery) -> RerankResult:
        entered = time.time_ns() if self.tracing is not None else 0
        engine = self._validate(q)
        overrides: dict[str, object] = dict(
            truncate=q.truncate, truncation_direction=q.truncation_direction, max_doc_tokens=q.max_tokens_per_doc,
            instruction=q.instruction,
        )
        if q.max_chunks_per_doc is not None:
            overrides["max_chunks"] = q.max_chunks_per_doc
        if q.chunk_overlap is not None:
            overrides["chunk_overlap"] = q.chunk_overlap
        options = engine.encode_options(**overrides)
        scores = await self.scoring.score(
            engine, q.query, q.documents, options, admit=partial(self._admit, engine, q), priority=q.priority,
            partition=q.tenant.cache_partition if q.tenant is not None else "", use_cache=q.use_cache,
        )
        return self._rank(engine, q, scores, entered_ns=entered)

    def _validate(self, q: RerankQuery) -> Engine:
        """The checks of the module docstring's order, up to the engine that will answer."""
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
        return engine

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

    def _rank(self, engine: Engine, q: RerankQuery, scored: Scores, *, entered_ns: int) -> RerankResult:
        """Raw scores to the ranked result: metrics, the non-finite check, activation, order,
        top_n, and the request's spans."""
        scored_ns = time.time_ns() if self.tracing is not None else 0
        model = engine.model
        n = len(q.documents)
        usage = scored.usage
        if scored.engine is None:  # all from the cache: nothing queued or run, no time to observe
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
            self.tracing.record(entered_ns=entered_ns, engine=scored.engine, rank=(scored_ns, time.time_ns()),
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
