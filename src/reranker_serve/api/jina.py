"""Jina AI's rerank API: `POST /api/v1/rerank` (the shape of api.jina.ai/v1/rerank).

Documents are strings or `{"text": ...}` objects; `return_documents` defaults to **true** and a
returned document is `{"text": ...}`. The reply is `{model, usage: {total_tokens}, results}`;
errors are FastAPI-style `{"detail": "..."}`, as Jina's API answers them.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from ..errors import RerankError
from ..service import RerankQuery, RerankResult
from .common import (
    Instruction, MaxChunks, ModelName, NON_BLANK, NON_EMPTY, RankedDocument, Text, TopN, Usage, ranked_documents,
)
from .dialect import Dialect, DialectRequest
from .lenient import LenientBool

__all__ = ["dialect"]


class JinaDocument(BaseModel):
    model_config = ConfigDict(extra="ignore")
    text: Text


class JinaQuery(BaseModel):
    model_config = ConfigDict(extra="ignore")
    text: Text = Field(json_schema_extra=NON_BLANK)


class JinaRerankRequest(DialectRequest):
    model: ModelName = Field(None, examples=["jina-reranker-v2-base-multilingual"])
    query: Annotated[Text, Field(examples=["Organic skincare products for sensitive skin"], json_schema_extra=NON_BLANK)] | JinaQuery
    documents: list[Text | JinaDocument] = Field(json_schema_extra=NON_EMPTY)
    top_n: TopN = None
    return_documents: LenientBool = Field(True, description="Include each document as {text} (Jina's default: true).")
    max_chunks_per_doc: MaxChunks = None
    instruction: Instruction = None

    def to_query(self) -> RerankQuery:
        query = self.query if isinstance(self.query, str) else self.query.text
        return RerankQuery(
            query=query,
            documents=[d if isinstance(d, str) else d.text for d in self.documents],
            top_n=self.top_n,
            return_documents=self.return_documents,
            model=self.model,
            max_chunks_per_doc=self.max_chunks_per_doc,
            instruction=self.instruction,
        )

    def reply(self, result: RerankResult) -> JinaRerankResponse:
        return JinaRerankResponse(model=result.model, usage=Usage.of(result),
                                  results=ranked_documents(result))


class JinaRerankResponse(BaseModel):
    model: str
    usage: Usage
    results: list[RankedDocument] = Field(description="Best first.")


class JinaErrorResponse(BaseModel):
    detail: str


class JinaDialect(Dialect):
    name = "jina"
    error_model = JinaErrorResponse
    prefixes = ("/api/",)

    def error_body(self, exc: RerankError) -> JinaErrorResponse:
        return JinaErrorResponse(detail=exc.message)


dialect = JinaDialect(tags=["Jina"])
dialect.rerank_route("/api/v1/rerank", request=JinaRerankRequest, reply=JinaRerankResponse,
                     summary="Rerank documents (Jina AI)")
