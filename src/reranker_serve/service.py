"""The one scoring call behind every route: ``Reranker.rerank(RerankQuery) -> RerankResult``.

Dialect modules translate their request into a ``RerankQuery`` and the ``RerankResult`` back;
validation that does not depend on the wire format happens here, in a fixed order, so every
dialect rejects the same requests for the same reasons:

    query non-empty → documents non-empty → documents ≤ MAX_DOCUMENTS → top_n ≥ 0
    → max_tokens_per_doc ≥ 1 → 1 ≤ max_chunks_per_doc ≤ 100 → `model` is served → it is loaded
    → an instruction only for models that take one
    → score (tokenize, queue, forward; a chunked document scores as its best window) → rank
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Sequence

from .config import MAX_CHUNKS_PER_DOC
from .errors import ErrorKind, RerankError
from .registry import ModelRegistry

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
    instruction: str | None = None  # None: the model's default (LLM rerankers only)
    priority: Literal["interactive", "batch"] = "interactive"  # the order the batcher takes pairs in


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


def _invalid(message: str) -> RerankError:
    return RerankError(ErrorKind.VALIDATION, message)


class Reranker:
    """Ranks with the served models; which model answers is the registry's business."""

    def __init__(self, registry: ModelRegistry) -> None:
        self.registry = registry
        self.settings = registry.settings
        self.metrics = registry.metrics

    async def rerank(self, q: RerankQuery) -> RerankResult:
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
        options = engine.encode_options(**overrides)
        scored = await engine.score(q.query, q.documents, options, priority=q.priority)
        self.metrics.observe_request(model.name, documents=n, tokens=scored.tokens, queue_time=scored.queue_time,
                                     inference_time=scored.inference_time)
        raw = scored.raw
        if any(not math.isfinite(x) for x in raw):
            raise RerankError(
                ErrorKind.BACKEND,
                f"the model produced non-finite scores in {model.dtype_name}; "
                "set RERANKER_DTYPE=float32 if this repeats",
            )
        scores = raw if q.raw_scores else [model.activate(x) for x in raw]
        # sorted() is stable: equal scores keep the order the client sent.
        order = sorted(range(n), key=lambda i: -scores[i])
        if q.top_n:
            order = order[: q.top_n]
        results = [
            Ranked(i, scores[i], q.documents[i] if q.return_documents else None) for i in order
        ]
        return RerankResult(
            model=model.name,
            results=results,
            total_tokens=scored.tokens,
            queue_time=scored.queue_time,
            inference_time=scored.inference_time,
        )
