"""`POST /rerank`: the native dialect, and Hugging Face TEI's dialect on the same path.

A body with `texts` is a TEI request (TEI semantics: `return_text`, `raw_scores`, `truncate`,
`truncation_direction`, and `top_n`, which LiteLLM `huggingface/` sends; the reply is a bare array
of `{index, score, text?}`); any other body is a native request (`documents`; the reply is
`{model, results, usage}`, `usage` with Infinity's `prompt_tokens` beside `total_tokens`, and a
returned document as vLLM's `{text}`: Infinity's string form is under /infinity, infinity.py).
Multimodal models also take vLLM's content parts for the query and documents (content.py).

Errors on this path use TEI's shape, `{"error": "...", "error_type": "Validation"}`, for both:
a body that is not even JSON cannot tell us which of the two the client meant.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, Discriminator, Field, Tag, field_validator

from ..errors import ErrorKind, RerankError
from ..service import RerankQuery, RerankResult
from .common import (
    Instruction, MaxChunks, ModelName, NON_BLANK, NON_EMPTY, RankedDocument, Text, TopN, ranked_documents,
)
from .content import ContentInput, MultiModalParam, content_documents, content_item
from .dialect import Dialect, DialectRequest
from .infinity import InfinityUsage
from .lenient import LenientBool

__all__ = ["dialect"]


# -- native --------------------------------------------------------------------------------------
class NativeRerankRequest(DialectRequest):
    model: ModelName = None
    query: Annotated[Text, Field(json_schema_extra=NON_BLANK)] | MultiModalParam = Field(
        description="The search query; for multimodal models also vLLM's {content: [parts]}.",
        examples=["What is the capital of France?"])
    documents: list[ContentInput] | MultiModalParam = Field(
        description="Candidate documents, as plain strings; for multimodal models also vLLM's content parts "
        "({content: [parts]} per document, or one {content: [parts]} whose parts are each a document).",
        json_schema_extra=NON_EMPTY)
    top_n: TopN = None
    return_documents: LenientBool = Field(False, description="Include each document's text in the results.")
    raw_scores: LenientBool = Field(False, description="Return raw logits instead of sigmoid-normalised scores.")
    max_chunks_per_doc: MaxChunks = None
    instruction: Instruction = None

    def to_query(self) -> RerankQuery:
        return RerankQuery(
            query=content_item(self.query, "query"),
            documents=content_documents(self.documents),
            top_n=self.top_n,
            return_documents=self.return_documents,
            raw_scores=self.raw_scores,
            model=self.model,
            max_chunks_per_doc=self.max_chunks_per_doc,
            instruction=self.instruction,
        )

    def reply(self, result: RerankResult) -> NativeRerankResponse:
        return NativeRerankResponse(model=result.model, results=ranked_documents(result),
                                    usage=InfinityUsage.of(result))


class NativeRerankResponse(BaseModel):
    model: str
    results: list[RankedDocument] = Field(description="Best first.")
    # prompt_tokens too: Infinity's clients (infinity_client, langchain's InfinityRerank) post
    # this body to /rerank and read it; their document shape is served under /infinity (infinity.py).
    usage: InfinityUsage


# -- TEI -------------------------------------------------------------------------------------------
class TEIRerankRequest(DialectRequest):
    dialect_label: ClassVar[str | None] = "tei"  # same path as native: label metrics and logs apart

    query: Text = Field(examples=["What is Deep Learning?"], json_schema_extra=NON_BLANK)
    texts: list[Text] = Field(examples=[["Deep Learning is not...", "Deep learning is..."]], json_schema_extra=NON_EMPTY)
    truncate: LenientBool | None = Field(None, description="Cut over-long inputs (null: the server default, true).")
    truncation_direction: Literal["right", "left"] = "right"
    raw_scores: LenientBool = False
    return_text: LenientBool = False
    # Not TEI's, but LiteLLM huggingface/ sends it (Cohere's top_n, passed through) and expects it honoured.
    top_n: TopN = None
    model: ModelName = None
    instruction: Instruction = None

    @field_validator("truncation_direction", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        # TEI's enum is `Left`/`Right`; newer TEI also takes the lowercase names.
        return value.lower() if isinstance(value, str) else value

    def to_query(self) -> RerankQuery:
        return RerankQuery(
            query=self.query,
            documents=self.texts,
            top_n=self.top_n,
            return_documents=self.return_text,
            raw_scores=self.raw_scores,
            truncate=self.truncate is not False,
            truncation_direction=self.truncation_direction,
            model=self.model,
            instruction=self.instruction,
        )

    def reply(self, result: RerankResult) -> list[TEIRank]:
        return [TEIRank(index=r.index, text=r.document, score=r.score) for r in result.results]


class TEIRank(BaseModel):
    index: int
    text: str | None = Field(None, description="Present when return_text is true.")
    score: float


# -- errors ----------------------------------------------------------------------------------------
class TEIErrorResponse(BaseModel):
    error: str
    error_type: str = Field(examples=["Validation"])


# TEI's ErrorType names for our kinds (its serde writes the variant names as they are).
_TEI_ERROR_TYPE = {
    ErrorKind.VALIDATION: "Validation",
    ErrorKind.PAYLOAD_TOO_LARGE: "Validation",
    ErrorKind.UNAUTHORIZED: "Unauthorized",
    ErrorKind.MODEL_NOT_FOUND: "Validation",
    ErrorKind.OVERLOADED: "Overloaded",
    ErrorKind.RATE_LIMITED: "Overloaded",
    ErrorKind.NOT_READY: "Unhealthy",
    ErrorKind.BACKEND: "Backend",
    ErrorKind.TIMEOUT: "Overloaded",
    ErrorKind.INTERNAL: "Backend",
    ErrorKind.ROUTE_NOT_FOUND: "Validation",
    ErrorKind.METHOD_NOT_ALLOWED: "Validation",
    ErrorKind.FORBIDDEN: "Unauthorized",
    ErrorKind.UNSUPPORTED_ENCODING: "Validation",
    ErrorKind.REQUEST_TIMEOUT: "Validation",
    ErrorKind.MISDIRECTED: "Validation",
}


class TEIDialect(Dialect):
    """Errors on /rerank use TEI's shape for both dialects: a body that is not even JSON cannot
    tell us which of the two the client meant."""

    name = "tei"
    error_model = TEIErrorResponse

    def error_body(self, exc: RerankError) -> TEIErrorResponse:
        return TEIErrorResponse(error=exc.message, error_type=_TEI_ERROR_TYPE[exc.kind])


# -- route -----------------------------------------------------------------------------------------
def _dialect_of(body: Any) -> str:
    return "tei" if isinstance(body, dict) and "texts" in body and "documents" not in body else "native"


RerankBody = Annotated[
    Annotated[NativeRerankRequest, Tag("native")] | Annotated[TEIRerankRequest, Tag("tei")],
    Discriminator(_dialect_of),
]

dialect = TEIDialect(tags=["native / TEI"])
dialect.rerank_route(
    "/rerank", request=RerankBody, reply=NativeRerankResponse | list[TEIRank],
    summary="Rerank documents (native shape, or TEI's when the body has `texts`)", label="native",
)
