"""Mixedbread's rerank API, `POST /v1/reranking`, a path it shares with RAGFlow's NVIDIA provider.

Request (mixedbread SDK 0.54 `Mixedbread.rerank`, which Haystack's `MixedbreadReranker` and
llama-index's `MixedbreadAIRerank` call): `{model, query, input: [str | object], rank_fields,
top_k, return_input, rewrite_query}` (`rewrite_query` is ignored). An object is ranked on its
`text`, or on `rank_fields` (as Cohere v1's documents).
Reply: `{model, object: "list", data: [{index, score, input?, object: "rank_result"}], top_k,
return_input, usage: {prompt_tokens, total_tokens}}`, best first; `top_k` is how many came back.

Which body is whose: one with `passages` is NVIDIA NIM's (RAGFlow posts `{model, query: {text},
passages, truncate, top_n}` to `{base_url}reranking`); any other is Mixedbread's. Errors on the
path are NIM's problem details, `{"type", "title", "status", "detail"}`, for both: a body that is
not even JSON cannot tell us which the client meant, and their `detail` is the field
Mixedbread's own (FastAPI-style) errors carry.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, BaseModel, Discriminator, Field, Tag, WithJsonSchema

from ..service import RerankQuery, RerankResult
from .common import ModelName, NON_BLANK, NON_EMPTY, Text, TopN, document_texts, scrub_surrogates
from .dialect import DialectRequest
from .infinity import InfinityUsage
from .lenient import LenientBool
from .nim import NIMDialect, NIMRankingRequest, NIMRankingResponse

__all__ = ["dialect"]

Input = Text | Annotated[dict[str, Any], AfterValidator(scrub_surrogates),
                         WithJsonSchema({"type": "object", "additionalProperties": True})]


class MixedbreadRerankRequest(DialectRequest):
    dialect_label: ClassVar[str | None] = "mixedbread"

    model: ModelName = Field(None, examples=["mixedbread-ai/mxbai-rerank-large-v2"])
    query: Text = Field(examples=["Who wrote To Kill a Mockingbird?"], json_schema_extra=NON_BLANK)
    input: list[Input] = Field(description="Strings, or objects ranked on `text` or rank_fields.",
                               json_schema_extra=NON_EMPTY)
    rank_fields: list[str] | None = None
    top_k: TopN = None
    return_input: LenientBool = Field(False, description="Include each input (as sent) in the results.")

    def to_query(self) -> RerankQuery:
        return RerankQuery(query=self.query, documents=document_texts(self.input, self.rank_fields),
                           top_n=self.top_k, model=self.model)

    def reply(self, result: RerankResult) -> MixedbreadRerankResponse:
        return MixedbreadRerankResponse(
            model=result.model,
            data=[MixedbreadResult(index=r.index, score=r.score,
                                   input=self.input[r.index] if self.return_input else None) for r in result.results],
            top_k=len(result.results), return_input=self.return_input, usage=InfinityUsage.of(result),
        )


class MixedbreadResult(BaseModel):
    index: int
    score: float
    input: str | dict[str, Any] | None = Field(None, description="Present when return_input is true.")
    object: Literal["rank_result"] = "rank_result"


class MixedbreadRerankResponse(BaseModel):
    model: str
    object: Literal["list"] = "list"
    data: list[MixedbreadResult] = Field(description="Best first.")
    top_k: int
    return_input: bool
    usage: InfinityUsage


class MixedbreadDialect(NIMDialect):
    """NIM's error shape (see the module docstring); its own name in logs and metrics."""

    name = "mixedbread"
    prefixes = ()


def _dialect_of(body: Any) -> str:
    return "nim" if isinstance(body, dict) and "passages" in body else "mixedbread"


RerankingBody = Annotated[
    Annotated[MixedbreadRerankRequest, Tag("mixedbread")] | Annotated[NIMRankingRequest, Tag("nim")],
    Discriminator(_dialect_of),
]

dialect = MixedbreadDialect(tags=["Mixedbread"])
dialect.rerank_route("/v1/reranking", request=RerankingBody, reply=MixedbreadRerankResponse | NIMRankingResponse,
                     summary="Rerank documents (Mixedbread; NVIDIA NIM's when the body has `passages`)")
