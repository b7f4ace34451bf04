"""Jina AI's rerank API: `POST /api/v1/rerank` (the shape of api.jina.ai/v1/rerank).

Documents are strings or `{"text": ...}` objects; `return_documents` defaults to **true** and a
returned document is `{"text": ...}`. The reply is `{model, usage: {total_tokens}, results}`;
errors are FastAPI-style `{"detail": "..."}`, as Jina's API answers them.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, StrictBool, Field

from ..errors import RerankError
from ..service import RerankQuery, RerankResult
from .common import (
    Instruction, MaxChunks, ModelName, NON_BLANK, NON_EMPTY, TopN, TextDocument, Usage, dialect_route, error_responses,
    timing_headers,
)
from .deps import RerankerDep

__all__ = ["router"]


class JinaDocument(BaseModel):
    model_config = ConfigDict(extra="ignore")
    text: str


class JinaQuery(BaseModel):
    model_config = ConfigDict(extra="ignore")
    text: str = Field(json_schema_extra=NON_BLANK)


class JinaRerankRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: ModelName = Field(None, examples=["jina-reranker-v2-base-multilingual"])
    query: Annotated[str, Field(examples=["Organic skincare products for sensitive skin"], json_schema_extra=NON_BLANK)] | JinaQuery
    documents: list[str | JinaDocument] = Field(json_schema_extra=NON_EMPTY)
    top_n: TopN = None
    return_documents: StrictBool = Field(True, description="Include each document as {text} (Jina's default: true).")
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


class JinaResult(BaseModel):
    index: int
    document: TextDocument | None = Field(None, description="Present when return_documents is true.")
    relevance_score: float


class JinaRerankResponse(BaseModel):
    model: str
    usage: Usage
    results: list[JinaResult] = Field(description="Best first.")

    @classmethod
    def from_result(cls, result: RerankResult) -> JinaRerankResponse:
        return cls(
            model=result.model,
            usage=Usage(total_tokens=result.total_tokens),
            results=[
                JinaResult(
                    index=r.index,
                    relevance_score=r.score,
                    document=TextDocument.of(r.document),
                )
                for r in result.results
            ],
        )


class JinaErrorResponse(BaseModel):
    detail: str


def render_error(exc: RerankError) -> Response:
    body = JinaErrorResponse(detail=exc.message)
    return JSONResponse(body.model_dump(), status_code=exc.kind.status, headers=exc.headers)


router = APIRouter(route_class=dialect_route(render_error), tags=["Jina"])


@router.post(
    "/api/v1/rerank",
    response_model=JinaRerankResponse,
    response_model_exclude_none=True,
    responses=error_responses(JinaErrorResponse, statuses=(401, 404, 413, 422, 429, 500, 503, 504)),
    summary="Rerank documents (Jina AI)",
)
async def rerank(body: JinaRerankRequest, reranker: RerankerDep, response: Response) -> JinaRerankResponse:
    result = await reranker.rerank(body.to_query())
    response.headers.update(timing_headers(result))
    return JinaRerankResponse.from_result(result)
