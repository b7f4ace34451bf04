"""michaelfeil/infinity's rerank API, under the base URL `/infinity`: `POST /infinity/rerank`.

Why a base URL of its own: LiteLLM `infinity/` and LiteLLM `hosted_vllm/` post the same request
to `{api_base}/rerank` — both build it with LiteLLM's Cohere-shaped ``RerankRequest``
(`{model, query, documents, top_n?, return_documents: true}`, `exclude_none`), with the same
headers — yet read a returned document differently: `infinity/`'s transformation wraps
`result["document"]` as the text itself (a string), `hosted_vllm/` calls `.get("text")` on it
(an object). Nothing in the request tells them apart, so the base URL does: `/rerank` answers
vLLM's `{text}` (native.py), `/infinity/rerank` answers Infinity's string.

Request (infinity_client 0.0.78 ``RerankInput``, which always sends `return_documents`,
`raw_scores` and `model`; LiteLLM `infinity/`): `{query, documents: [str], return_documents,
raw_scores, model, top_n}`.
Reply (infinity's ``ReRankResult``): `{object: "rerank", results: [{relevance_score, index,
document?}], model, usage: {prompt_tokens, total_tokens}, id, created}`, best first.
Errors: infinity's OpenAI-style `{"error": {"message", "type", "param", "code"}}`.
"""

from __future__ import annotations

import time
import uuid
from typing import ClassVar, Literal

from pydantic import BaseModel, Field

from ..errors import ErrorKind, RerankError
from ..service import RerankQuery, RerankResult
from .common import ModelName, NON_BLANK, NON_EMPTY, Text, TopN, Usage
from .dialect import Dialect, DialectRequest
from .lenient import LenientBool

__all__ = ["InfinityUsage", "dialect"]


class InfinityUsage(Usage):
    prompt_tokens: int = Field(description="Tokens of the prompt: all of them (reranking generates none).")

    @classmethod
    def of(cls, result: RerankResult) -> InfinityUsage:
        return cls(prompt_tokens=result.usage.total_tokens, **Usage.of(result).model_dump())


class InfinityRerankRequest(DialectRequest):
    dialect_label: ClassVar[str | None] = "infinity"  # metrics and logs (observability knows the older paths)

    model: ModelName = Field(None, examples=["mixedbread-ai/mxbai-rerank-xsmall-v1"])
    query: Text = Field(examples=["Where is Munich?"], json_schema_extra=NON_BLANK)
    documents: list[Text] = Field(json_schema_extra=NON_EMPTY)
    top_n: TopN = None
    return_documents: LenientBool = False
    raw_scores: LenientBool = Field(False, description="Raw logits instead of sigmoid scores.")

    def to_query(self) -> RerankQuery:
        return RerankQuery(query=self.query, documents=self.documents, top_n=self.top_n,
                           return_documents=self.return_documents, raw_scores=self.raw_scores, model=self.model)

    def reply(self, result: RerankResult) -> InfinityRerankResponse:
        return InfinityRerankResponse(
            results=[InfinityResult(relevance_score=r.score, index=r.index, document=r.document)
                     for r in result.results],
            model=result.model, usage=InfinityUsage.of(result), id=f"infinity-{uuid.uuid4()}",
            created=int(time.time()),
        )


class InfinityResult(BaseModel):
    relevance_score: float
    index: int
    document: str | None = Field(None, description="The document sent, when return_documents is true.")


class InfinityRerankResponse(BaseModel):
    object: Literal["rerank"] = "rerank"
    results: list[InfinityResult] = Field(description="Best first.")
    model: str
    usage: InfinityUsage
    id: str
    created: int


class InfinityError(BaseModel):
    message: str
    type: str = Field(examples=["invalid_request_error"])
    param: str | None = None
    code: int


class InfinityErrorResponse(BaseModel):
    error: InfinityError


class InfinityDialect(Dialect):
    name = "infinity"
    error_model = InfinityErrorResponse
    prefixes = ("/infinity/",)

    def error_body(self, exc: RerankError) -> InfinityErrorResponse:
        kind = "invalid_request_error" if self.status(exc.kind) < 500 else "internal_server_error"
        if exc.kind in (ErrorKind.OVERLOADED, ErrorKind.RATE_LIMITED):
            kind = "rate_limit_error"
        return InfinityErrorResponse(error=InfinityError(message=exc.message, type=kind, code=self.status(exc.kind)))


dialect = InfinityDialect(tags=["Infinity"])
dialect.rerank_route("/infinity/rerank", request=InfinityRerankRequest, reply=InfinityRerankResponse,
                     summary="Rerank documents (infinity; documents returned as strings)")
