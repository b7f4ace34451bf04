"""Voyage AI's rerank API, served on `POST /v1/rerank` beside Cohere v1 (both vendors use that path).

Request (voyageai SDK 0.5 `Client.rerank` → `Reranking.create`, which JSON-encodes every
argument, `top_k: null` included; LiteLLM `voyage/`; Dify's Voyage provider):
`{query, documents: [str], model, top_k, truncation, return_documents}`.
Reply: `{object: "list", data: [{relevance_score, index, document?}], model, usage: {total_tokens}}`,
best first; a returned document is the string sent.

Which body is Voyage's (``is_voyage``): one with a field only Voyage has (`top_k`, `truncation`)
and none that only Cohere v1 has (`top_n`, `rank_fields`, `max_chunks_per_doc`). A body with
neither (`{query, documents}` alone, or LiteLLM `voyage/` called without top_n) is Cohere's.

Errors on /v1/rerank keep Cohere's shape, `{"message": ...}`, for both: a body that is not even
JSON cannot tell us which of the two the client meant (as TEI's on /rerank). Voyage's own shape,
`{"detail": ...}`, is ``VoyageErrorResponse``, documented for the record.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, Field

from ..service import RerankQuery, RerankResult
from .common import ModelName, NON_BLANK, NON_EMPTY, Text, TopN, Usage
from .dialect import DialectRequest
from .lenient import LenientBool

__all__ = ["VoyageRerankRequest", "VoyageRerankResponse", "is_voyage"]

_VOYAGE_ONLY = ("top_k", "truncation")
_COHERE_ONLY = ("top_n", "rank_fields", "max_chunks_per_doc")


def is_voyage(body: Any) -> bool:
    return (isinstance(body, dict) and any(k in body for k in _VOYAGE_ONLY)
            and not any(k in body for k in _COHERE_ONLY))


class VoyageRerankRequest(DialectRequest):
    dialect_label: ClassVar[str | None] = "voyage"

    model: ModelName = Field(None, examples=["rerank-2.5"])
    query: Text = Field(examples=["When is Apple's conference call scheduled?"], json_schema_extra=NON_BLANK)
    documents: list[Text] = Field(json_schema_extra=NON_EMPTY)
    top_k: TopN = None
    truncation: LenientBool = Field(True, description="Cut over-long inputs (false: refuse them, 413).")
    return_documents: LenientBool = Field(False, description="Include each document (the string sent).")

    def to_query(self) -> RerankQuery:
        return RerankQuery(query=self.query, documents=self.documents, top_n=self.top_k,
                           return_documents=self.return_documents, truncate=self.truncation, model=self.model)

    def reply(self, result: RerankResult) -> VoyageRerankResponse:
        return VoyageRerankResponse(
            data=[VoyageResult(relevance_score=r.score, index=r.index, document=r.document) for r in result.results],
            model=result.model, usage=Usage.of(result),
        )


class VoyageResult(BaseModel):
    relevance_score: float
    index: int
    document: str | None = Field(None, description="Present when return_documents is true.")


class VoyageRerankResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[VoyageResult] = Field(description="Best first.")
    model: str
    usage: Usage


class VoyageErrorResponse(BaseModel):
    detail: str
