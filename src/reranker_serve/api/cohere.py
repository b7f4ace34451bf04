"""Cohere's rerank API: `POST /v1/rerank` and `POST /v2/rerank` (schemas of the cohere-python SDK).

v1: documents are strings or objects (`{"text": ...}` plus any other keys; `rank_fields` picks the
    fields to rank on), `return_documents` defaults to false, `max_chunks_per_doc` splits long
    documents into overlapping windows (a document scores as its best window).
    Jina-shaped callers (Dify, RAGFlow) also post to /v1/rerank, so the reply carries Jina's
    `usage.total_tokens` beside Cohere's `meta`.
v2: documents are strings; `max_tokens_per_doc` truncates each document; results carry only
    `index` and `relevance_score` (a document too when an older client asks with return_documents).

Errors are `{"message": "..."}`; Cohere answers a bad request with 400 (not 422), and so do we.

Also on /v1/rerank: Voyage's body (voyage.py; the discriminator is ``voyage.is_voyage``);
Together's typed reply (`object: "rerank"`, `model`) on the v1 reply; SiliconFlow's
`max_chunks_per_doc` above the cap served with the cap (X-Reranker-Adjusted) and its
`overlap_tokens`; booleans as "true"/"false" (lenient.py).
"""

from __future__ import annotations

import math
import uuid
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, Discriminator, Field, Tag, WithJsonSchema

from ..config import MAX_CHUNKS_PER_DOC
from ..errors import ErrorKind, RerankError
from ..service import RerankQuery, RerankResult
from .common import (
    Instruction, JsonInt, ModelName, NON_BLANK, NON_EMPTY, Text, TopN, Usage, document_texts, scrub_surrogates,
)
from .content import content_item, parse_content
from .dialect import Dialect, DialectRequest
from .lenient import LenientBool, clamp
from .voyage import VoyageRerankRequest, VoyageRerankResponse, is_voyage

__all__ = ["dialect"]

# An object must carry `text` unless rank_fields names other fields; the schema states the
# common case, the service checks the exact rule (with a message naming the document).
Document = Text | Annotated[dict[str, Any], AfterValidator(scrub_surrogates),
                            WithJsonSchema({"type": "object", "required": ["text"], "additionalProperties": True})]


# -- requests --------------------------------------------------------------------------------------
class _CohereRequest(DialectRequest):
    model: ModelName = None
    query: Text = Field(examples=["What is the capital of the United States?"], json_schema_extra=NON_BLANK)
    documents: list[Document] = Field(
        description="Strings, or objects with a `text` field (see rank_fields).", json_schema_extra=NON_EMPTY
    )
    top_n: TopN = None
    rank_fields: list[str] | None = Field(None, description="Object fields to rank on (default: `text`).")
    return_documents: LenientBool = Field(False, description="Include each document in the results.")
    instruction: Instruction = None

    def _query(self, **extra: Any) -> RerankQuery:
        return RerankQuery(
            query=self.query,
            documents=self._documents(),
            top_n=self.top_n,
            return_documents=False,  # the reply returns the client's own document objects
            model=self.model,
            instruction=self.instruction,
            **extra,
        )

    def _documents(self) -> list[Any]:
        """The texts to rank; vLLM's `{"content": [parts]}` documents (its /v1/rerank and /v2/rerank
        take them for multimodal models) as their text and image (content.py)."""
        content = {i: content_item(parse_content(doc, ("documents", i)), f"documents[{i}]")
                   for i, doc in enumerate(self.documents)
                   if isinstance(doc, dict) and isinstance(doc.get("content"), list) and not self.rank_fields}
        texts: list[Any] = document_texts([("" if i in content else d) for i, d in enumerate(self.documents)],
                                          self.rank_fields)
        for i, item in content.items():
            texts[i] = item
        return texts

    def returned_document(self, index: int) -> dict[str, Any] | None:
        if not self.return_documents:
            return None
        doc = self.documents[index]
        return {"text": doc} if isinstance(doc, str) else doc


class CohereV1RerankRequest(_CohereRequest):
    # More than the server's cap is served with the cap (and the X-Reranker-Adjusted header), not
    # refused: SiliconFlow-shaped clients (RAGFlow, llama-index) send 1024 and cannot be changed.
    max_chunks_per_doc: JsonInt | None = Field(
        None, json_schema_extra={"minimum": 1},
        description="Split documents longer than the window into up to N overlapping windows; a document scores "
        f"as its best window (null: the server's RERANKER_MAX_CHUNKS_PER_DOC; 1: truncate; more than "
        f"{MAX_CHUNKS_PER_DOC}: {MAX_CHUNKS_PER_DOC}).",
    )
    overlap_tokens: JsonInt | None = Field(
        None, ge=0, description="Tokens shared by consecutive windows (SiliconFlow's name; null: the server's "
        "RERANKER_CHUNK_OVERLAP; at most half a window).",
    )

    def to_query(self) -> RerankQuery:
        chunks, adjusted = clamp("max_chunks_per_doc", self.max_chunks_per_doc, MAX_CHUNKS_PER_DOC,
                                 "the server's cap")
        self.note(adjusted)
        return self._query(max_chunks_per_doc=chunks, chunk_overlap=self.overlap_tokens)

    def reply(self, result: RerankResult) -> CohereV1RerankResponse:
        return CohereV1RerankResponse.build(
            self, result, ApiVersion(version="1"), usage=Usage.of(result),
            model=result.model,
        )


class CohereV2RerankRequest(_CohereRequest):
    max_tokens_per_doc: JsonInt | None = Field(None, json_schema_extra={"minimum": 1}, description="Truncate each document to this many tokens.")

    def to_query(self) -> RerankQuery:
        return self._query(max_tokens_per_doc=self.max_tokens_per_doc)

    def reply(self, result: RerankResult) -> CohereV2RerankResponse:
        return CohereV2RerankResponse.build(self, result, ApiVersion(version="2", is_experimental=False))


# -- replies ---------------------------------------------------------------------------------------
class ApiVersion(BaseModel):
    version: str
    is_experimental: bool | None = None


class BilledUnits(BaseModel):
    search_units: int = Field(description="One per 100 documents (Cohere's billing unit).")


class ApiMeta(BaseModel):
    api_version: ApiVersion
    billed_units: BilledUnits


class CohereResult(BaseModel):
    index: int
    relevance_score: float
    document: dict[str, Any] | None = Field(None, description="Present when return_documents is true.")


class CohereRerankResponse(BaseModel):
    id: str
    results: list[CohereResult] = Field(description="Best first.")
    meta: ApiMeta

    @classmethod
    def build(cls, request: _CohereRequest, result: RerankResult, version: ApiVersion, **extra: Any) -> Any:
        return cls(
            id=str(uuid.uuid4()),
            results=[
                CohereResult(index=r.index, relevance_score=r.score, document=request.returned_document(r.index))
                for r in result.results
            ],
            meta=ApiMeta(
                api_version=version,
                billed_units=BilledUnits(search_units=math.ceil(len(request.documents) / 100)),
            ),
            **extra,
        )


class CohereV1RerankResponse(CohereRerankResponse):
    # Together's typed reply (the together SDK, LiteLLM together_ai/) declares these two required.
    object: Literal["rerank"] = "rerank"
    model: str = Field(description="The model that answered.")
    usage: Usage = Field(description="Jina's token count, for Jina-shaped clients of /v1/rerank.")


class CohereV2RerankResponse(CohereRerankResponse):
    pass


# -- errors ----------------------------------------------------------------------------------------
class CohereErrorResponse(BaseModel):
    message: str


class CohereDialect(Dialect):
    name = "cohere"
    error_model = CohereErrorResponse
    prefixes = ("/v1/", "/v2/")

    def status(self, kind: ErrorKind) -> int:
        # Cohere answers every bad request with 400, a too-large one included.
        return 400 if kind in (ErrorKind.VALIDATION, ErrorKind.PAYLOAD_TOO_LARGE) else kind.status

    def error_body(self, exc: RerankError) -> CohereErrorResponse:
        bad_request = self.status(exc.kind) == 400
        return CohereErrorResponse(message=f"invalid request: {exc.message}" if bad_request else exc.message)


# -- routes ----------------------------------------------------------------------------------------
def _v1_dialect_of(body: Any) -> str:
    return "voyage" if is_voyage(body) else "cohere"


# /v1/rerank is Cohere v1's path and Voyage's: a body with Voyage's own fields (`top_k`,
# `truncation`) and none of Cohere's (`top_n`, `rank_fields`, `max_chunks_per_doc`) is Voyage's.
V1RerankBody = Annotated[
    Annotated[CohereV1RerankRequest, Tag("cohere")] | Annotated[VoyageRerankRequest, Tag("voyage")],
    Discriminator(_v1_dialect_of),
]

dialect = CohereDialect(tags=["Cohere"])
dialect.rerank_route("/v1/rerank", request=V1RerankBody, reply=CohereV1RerankResponse | VoyageRerankResponse,
                     label="cohere-v1",
                     summary="Rerank documents (Cohere v1, Jina-shaped clients; Voyage's when the body has "
                     "`top_k` or `truncation`)")
dialect.rerank_route("/v2/rerank", request=CohereV2RerankRequest, reply=CohereV2RerankResponse, label="cohere-v2",
                     summary="Rerank documents (Cohere v2)")
