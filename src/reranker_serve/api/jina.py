"""Jina AI's rerank API: `POST /api/v1/rerank` (the shape of api.jina.ai/v1/rerank).

Documents are strings or `{"text": ...}` objects; `return_documents` defaults to **true** and a
returned document is `{"text": ...}`. Multimodal models (jina-reranker-m0, Qwen3-VL-Reranker)
also take `{"image": "<base64, data: URL or URL>"}` documents and query, as Jina's API does; an
image document is returned as sent (media.py checks and decodes the images). The reply is `{model, usage: {total_tokens}, results}`;
errors are FastAPI-style `{"detail": "..."}`, as Jina's API answers them.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..errors import RerankError
from ..media import MediaDocument, Picture
from ..service import RerankQuery, RerankResult
from .common import (
    Instruction, MaxChunks, ModelName, NON_BLANK, NON_EMPTY, RankedDocument, Text, TopN, Usage, ranked_documents,
)
from .dialect import Dialect, DialectRequest
from .lenient import LenientBool

__all__ = ["dialect"]


_IMAGE = "An image: base64 of the file, a data: URL, or an http(s) URL (fetched only from hosts the server allows)."


class JinaDocument(BaseModel):
    model_config = ConfigDict(extra="ignore")
    text: Text | None = None
    image: str | None = Field(None, description=_IMAGE)

    @model_validator(mode="after")
    def _something(self) -> JinaDocument:
        if self.text is None and self.image is None:
            raise ValueError("a document object needs `text` or `image`")
        return self


class JinaQuery(BaseModel):
    model_config = ConfigDict(extra="ignore")
    text: Text | None = Field(None, json_schema_extra=NON_BLANK)
    image: str | None = Field(None, description=_IMAGE)

    @model_validator(mode="after")
    def _something(self) -> JinaQuery:
        if self.text is None and self.image is None:
            raise ValueError("a query object needs `text` or `image`")
        return self


def _item(value: str | JinaDocument | JinaQuery) -> str | MediaDocument:
    """A text as is; an object with an image as a MediaDocument that returns as sent."""
    if isinstance(value, str):
        return value
    if value.image is None:
        return value.text or ""
    return MediaDocument(picture=Picture(source=value.image), text=value.text or "",
                         sent=value.model_dump(exclude_none=True))


class JinaRerankRequest(DialectRequest):
    model: ModelName = Field(None, examples=["jina-reranker-v2-base-multilingual"])
    query: Annotated[Text, Field(examples=["Organic skincare products for sensitive skin"], json_schema_extra=NON_BLANK)] | JinaQuery
    documents: list[Text | JinaDocument] = Field(json_schema_extra=NON_EMPTY)
    top_n: TopN = None
    return_documents: LenientBool = Field(True, description="Include each document as {text} (Jina's default: true).")
    max_chunks_per_doc: MaxChunks = None
    instruction: Instruction = None

    def to_query(self) -> RerankQuery:
        return RerankQuery(
            query=_item(self.query),
            documents=[_item(d) for d in self.documents],
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
