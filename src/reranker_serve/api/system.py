"""System routes, open without an API key: liveness, readiness, and what is being served."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field

from .. import __version__
from .deps import RerankerDep, SettingsDep

__all__ = ["router"]

router = APIRouter(tags=["system"])


class Status(BaseModel):
    status: str
    error: str | None = None


class Info(BaseModel):
    model: str = Field(description="Name that replies carry.")
    model_source: str = Field(description="Hub id or local folder it was loaded from.")
    ready: bool
    device: str | None
    dtype: str | None
    max_length: int = Field(description="Tokens per (query, document) pair.")
    max_documents: int
    batch_size: int
    max_batch_tokens: int
    max_queue: int
    version: str
    # TEI's /info names, for clients that size their requests from them.
    model_id: str
    model_dtype: str | None
    max_input_length: int
    max_client_batch_size: int


@router.get("/health", response_model=Status, response_model_exclude_none=True, summary="Liveness: the process answers")
async def health() -> Status:
    return Status(status="ok")


@router.get(
    "/ready",
    response_model=Status,
    response_model_exclude_none=True,
    responses={503: {"model": Status, "description": "Model loading, or failed to load"}},
    summary="Readiness: the model is loaded and warmed up",
)
async def ready(reranker: RerankerDep) -> Status | JSONResponse:
    if reranker.ready:
        return Status(status="ready")
    status = Status(status="failed", error=reranker.load_error) if reranker.load_error else Status(status="loading")
    return JSONResponse(status.model_dump(exclude_none=True), status_code=503, headers={"Retry-After": "5"})


@router.get("/info", response_model=Info, summary="The model and limits being served")
async def info(reranker: RerankerDep, settings: SettingsDep) -> Info:
    engine = reranker.engine
    model = engine.model if engine else None
    max_length = model.max_length if model else settings.max_length
    dtype = model.dtype_name if model else None
    return Info(
        model=reranker.model_id,
        model_source=settings.model_source,
        ready=reranker.ready,
        device=model.device if model else None,
        dtype=dtype,
        max_length=max_length,
        max_documents=settings.max_documents,
        batch_size=settings.batch_size,
        max_batch_tokens=engine.batcher.max_batch_tokens if engine else settings.max_batch_tokens,
        max_queue=settings.max_queue,
        version=__version__,
        model_id=reranker.model_id,
        model_dtype=dtype,
        max_input_length=max_length,
        max_client_batch_size=settings.max_documents,
    )


@router.get("/metrics", summary="Prometheus metrics", response_class=Response,
            responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text format"}})
async def metrics(request: Request) -> Response:
    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
