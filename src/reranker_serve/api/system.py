"""System routes: liveness and readiness (open, for probes), and what is being served (with keys
configured these need a key, /metrics an admin key: security.py)."""

from __future__ import annotations

import time
from pathlib import PurePath
from typing import Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, Field

from .. import __version__
from ..config import ModelSpec
from ..families import FAMILY_NAMES
from ..registry import ModelRegistry, ModelState
from .deps import RegistryDep, SettingsDep

__all__ = ["router"]

router = APIRouter(tags=["system"])


class Status(BaseModel):
    status: str
    error: str | None = None
    instance: str | None = Field(None, description="RERANKER_INSTANCE_ID, when set (daemon.sh sets it).")


class ModelInfo(BaseModel):
    name: str = Field(description="The name replies carry; requests select it by this or an alias.")
    aliases: list[str] = Field(description="Other names that select it.")
    source: str = Field(description="Hub id or local folder it was loaded from (a folder's name only, for keys that are not admin).")
    ready: bool
    family: str | None = Field(description=f"One of {', '.join(FAMILY_NAMES)}.")
    backend: str | None = Field(description="What runs the forward pass: torch or openvino.")
    attention: str | None = Field(None, description="padded or unpadded (packed, variable-length attention).")
    backend_note: str | None = Field(None, description="Why this backend: OpenVINO's start-up check against torch, "
                                     "or why the model serves on torch instead.")
    device: str | None
    dtype: str | None
    max_length: int = Field(description="Tokens per (query, document) pair.")
    batch_size: int
    max_batch_tokens: int
    max_queue: int
    batches_in_flight: int | None = Field(
        None, description="Most forward passes kept in flight: 2 where the device computes asynchronously "
        "(CUDA; OpenVINO while its batches take under 50 ms), so the next batch is queued while one computes; "
        "1 otherwise.",
    )
    takes_instruction: bool | None = Field(description="Whether requests may send an `instruction`.")
    quantization: dict[str, object] | None = Field(
        None, description="int8 (RERANKER_QUANTIZE): the setting, the mode served (int8-static, int8-weights or off) "
        "and why, the calibration set, the bounds, and each method's start-up self-check against float32 (max |Δ "
        "score|, Spearman and top-k overlap per query) and whether it was read from the cache.",
    )


class TEIClassifier(BaseModel):
    """TEI's `ClassifierModel`: a reranker is a one-label classifier."""

    id2label: dict[str, str] = {"0": "LABEL_0"}
    label2id: dict[str, int] = {"LABEL_0": 0}


class Info(BaseModel):
    model: str = Field(description="Name that replies of the default model carry.")
    model_source: str = Field(description="Hub id or local folder the default model was loaded from (a folder's name only, for keys that are not admin).")
    ready: bool
    device: str | None
    dtype: str | None
    max_length: int = Field(description="Tokens per (query, document) pair.")
    max_documents: int
    batch_size: int
    max_batch_tokens: int
    max_queue: int
    version: str
    models: list[ModelInfo] = Field(description="Every served model, the default first.")
    # TEI's /info names, for clients that size their requests from them.
    model_id: str
    model_dtype: str | None
    max_input_length: int
    max_client_batch_size: int
    # The rest of TEI's /info: Dify's TEI provider refuses a server whose `model_type` has no
    # `reranker` key; the others are there for clients that read TEI's whole Info.
    model_type: dict[str, TEIClassifier] = Field(description='TEI\'s model kind: {"reranker": {id2label, label2id}}.')
    model_sha: str | None = None
    max_concurrent_requests: int = Field(description="TEI's name for the queue bound (max_queue).")
    max_batch_requests: int | None = Field(description="TEI's name for the batch size.")
    auto_truncate: bool = Field(True, description="Over-long inputs are cut unless a request says otherwise.")
    tokenization_workers: int = Field(description="Processes tokenizing (one per worker).")
    sha: str | None = None
    docker_label: str | None = None


class ModelCard(BaseModel):
    """One entry of `GET /v1/models`, in the OpenAI list shape that vLLM and infinity use."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "reranker-serve"
    root: str = Field(description="Hub id or local folder.")
    ready: bool
    family: str | None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


_STARTED = int(time.time())


def _shows_paths(request: Request) -> bool:
    """Whether the caller may see where models lie on disk: without keys (one tenant, the
    operator), or with an admin key; other tenants see a local folder's name only."""
    key = request.state.api_key  # set by security.SystemRouteGuard on these routes
    return not request.app.state.keys.enabled or (key is not None and key.admin)


def _model_info(registry: ModelRegistry, spec: ModelSpec, *, paths: bool = True) -> ModelInfo:
    engine = registry.engine_of(spec)
    model = engine.model if engine else None
    return ModelInfo(
        name=spec.name,
        aliases=list(spec.names[1:]),
        source=spec.source if paths or not spec.local else PurePath(spec.source).name,
        ready=registry.state(spec) is ModelState.READY,
        family=model.family if model else None,
        backend=model.backend if model else None,
        attention=model.attention if model else None,
        backend_note=(model.backend_note or None) if model else None,
        device=model.device if model else None,
        dtype=model.dtype_name if model else None,
        max_length=model.max_length if model else spec.max_length,
        batch_size=engine.batcher.max_batch_size if engine else spec.batch_size,
        max_batch_tokens=engine.batcher.max_batch_tokens if engine else spec.max_batch_tokens,
        max_queue=spec.max_queue,
        batches_in_flight=engine.batcher.depth if engine else None,
        takes_instruction=model.takes_instruction if model else None,
        quantization=dict(model.quantization) if model and model.quantization is not None else None,
    )


@router.get("/health", response_model=Status, response_model_exclude_none=True, summary="Liveness: the process answers")
async def health(settings: SettingsDep) -> Status:
    return Status(status="ok", instance=settings.instance_id)


@router.get(
    "/ready",
    response_model=Status,
    response_model_exclude_none=True,
    responses={503: {"model": Status, "description": "Model loading, or failed to load"}},
    summary="Readiness: the model is loaded and warmed up",
)
async def ready(request: Request, registry: RegistryDep, settings: SettingsDep) -> Status | JSONResponse:
    instance = settings.instance_id
    readiness = request.app.state.readiness  # several workers: ready when every one of them is
    if registry.ready and (readiness is None or readiness.all_ready()):
        return Status(status="ready", instance=instance)
    error = registry.load_error
    status = Status(status="failed", error=error, instance=instance) if error else Status(status="loading",
                                                                                             instance=instance)
    return JSONResponse(status.model_dump(exclude_none=True), status_code=503, headers={"Retry-After": "5"})


@router.get("/info", response_model=Info, summary="The models and limits being served")
async def info(request: Request, registry: RegistryDep, settings: SettingsDep) -> Info:
    models = [_model_info(registry, spec, paths=_shows_paths(request)) for spec in registry.specs]
    default = models[0]
    return Info(
        model=default.name,
        model_source=default.source,
        ready=registry.ready,
        device=default.device,
        dtype=default.dtype,
        max_length=default.max_length,
        max_documents=settings.max_documents,
        batch_size=default.batch_size,
        max_batch_tokens=default.max_batch_tokens,
        max_queue=default.max_queue,
        version=__version__,
        models=models,
        model_id=default.name,
        model_dtype=default.dtype,
        max_input_length=default.max_length,
        max_client_batch_size=settings.max_documents,
        model_type={"reranker": TEIClassifier()},
        max_concurrent_requests=default.max_queue,
        max_batch_requests=default.batch_size,
        tokenization_workers=settings.workers,
    )


@router.get("/v1/models", response_model=ModelList, summary="Served models (OpenAI list shape), one entry per name")
async def list_models(request: Request, registry: RegistryDep) -> ModelList:
    models = [_model_info(registry, spec, paths=_shows_paths(request)) for spec in registry.specs]
    return ModelList(data=[
        ModelCard(id=name, created=_STARTED, root=m.source, ready=m.ready, family=m.family)
        for m in models for name in (m.name, *m.aliases)
    ])


@router.get("/metrics", summary="Prometheus metrics", response_class=Response,
            responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text format"}})
async def metrics(request: Request) -> Response:
    return Response(request.app.state.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
