"""NVIDIA NIM's ranking API (NeMo Retriever reranking): `POST /v1/ranking` and
`POST /v1/retrieval/{model}/reranking` (and `/v1/reranking`, shared with Mixedbread: mixedbread.py).

Request: `{model, query: {text}, passages: [{text}], truncate: "NONE" | "END"}` — what
langchain-nvidia-ai-endpoints 1.5 `NVIDIARerank` (`{base_url}/ranking`), Haystack's
`NvidiaRanker`, llama-index's `NVIDIARerank` and LiteLLM `nvidia_nim/ranking/…` send; LiteLLM
`nvidia_nim/…` adds `top_k` on `/v1/retrieval/{model}/reranking`; RAGFlow's NVIDIA provider
adds `top_n` on `{base_url}reranking`. Both are honoured (the best N). The model is the body's
(the path's `{model}` is the hosted API's routing; one served model answers any name).
`truncate`: "END" cuts over-long inputs, "NONE" refuses them (413), absent: the server's default
(cut, as every other dialect here).

Reply: `{rankings: [{index, logit}], usage: {prompt_tokens, total_tokens}}`, best first; `logit` is
the raw score (the model's logit; P("yes") logit-free rerankers give their raw score too).

Errors: the problem details NVIDIA's API answers, `{"type", "title", "status", "detail"}` (the
fields langchain-nvidia-ai-endpoints formats into its exception).
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Annotated, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..errors import RerankError
from ..service import RerankQuery, RerankResult
from .common import ModelName, NON_BLANK, NON_EMPTY, Text, TopN
from .dialect import Dialect, DialectRequest
from .infinity import InfinityUsage

__all__ = ["NIMDialect", "NIMRankingRequest", "NIMRankingResponse", "dialect"]


class NIMText(BaseModel):
    model_config = ConfigDict(extra="ignore")
    text: Text


class NIMQuery(NIMText):
    text: Annotated[Text, Field(json_schema_extra=NON_BLANK)]


class NIMRankingRequest(DialectRequest):
    dialect_label: ClassVar[str | None] = "nim"

    model: ModelName = Field(None, examples=["nvidia/llama-3.2-nv-rerankqa-1b-v2"])
    query: NIMQuery = Field(examples=[{"text": "which way should i go?"}])
    passages: list[NIMText] = Field(json_schema_extra=NON_EMPTY)
    truncate: Literal["NONE", "END"] | None = Field(
        None, description='"END": cut over-long inputs; "NONE": refuse them (413); null: the server default (cut).'
    )
    top_k: TopN = None
    top_n: TopN = None

    def to_query(self) -> RerankQuery:
        # top_k wins when both are sent; a negative one of either is refused (by the service).
        sent = [v for v in (self.top_k, self.top_n) if v is not None]
        top = min(sent) if sent and min(sent) < 0 else next(iter(sent), None)
        return RerankQuery(
            query=self.query.text, documents=[p.text for p in self.passages], top_n=top, raw_scores=True,
            truncate=self.truncate != "NONE", model=self.model,
        )

    def reply(self, result: RerankResult) -> NIMRankingResponse:
        return NIMRankingResponse(rankings=[NIMRanking(index=r.index, logit=r.score) for r in result.results],
                                  usage=InfinityUsage.of(result))


class NIMRanking(BaseModel):
    index: int
    logit: float = Field(description="The raw score.")


class NIMRankingResponse(BaseModel):
    rankings: list[NIMRanking] = Field(description="Best first.")
    usage: InfinityUsage


class NIMErrorResponse(BaseModel):
    type: str = "about:blank"
    title: str = Field(examples=["Unprocessable Entity"])
    status: int
    detail: str


class NIMDialect(Dialect):
    name = "nim"
    error_model = NIMErrorResponse
    prefixes = ("/v1/retrieval/",)

    def error_body(self, exc: RerankError) -> NIMErrorResponse:
        status = self.status(exc.kind)
        return NIMErrorResponse(title=HTTPStatus(status).phrase, status=status, detail=exc.message)


dialect = NIMDialect(tags=["NVIDIA NIM"])
dialect.rerank_route("/v1/ranking", request=NIMRankingRequest, reply=NIMRankingResponse,
                     summary="Rank passages (NVIDIA NIM)")
dialect.rerank_route("/v1/retrieval/{model:path}/reranking", request=NIMRankingRequest, reply=NIMRankingResponse,
                     summary="Rank passages (NVIDIA's hosted API path; the body's model answers)")
