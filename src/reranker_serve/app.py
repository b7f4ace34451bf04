"""The app factory. The lifespan builds the engines; routes reach them through ``app.state``.

The models load in the background, one after the other, after the server starts listening, so
`/health` answers at once and `/ready` turns 200 only when every model is loaded and warmed
(orchestrators and daemon.sh wait on it); a model still loading answers 503 with Retry-After.
"""

from __future__ import annotations

import asyncio
import threading
from contextlib import asynccontextmanager
from functools import partial
from typing import AsyncIterator, Callable, Sequence

import anyio
from fastapi import FastAPI, Security
from fastapi.middleware.cors import CORSMiddleware
from fastapi_offline import FastAPIOffline
from loguru import logger

from . import __version__
from .api import cohere, jina, native, system
from .api.common import bearer_scheme
from .config import Settings, load_settings
from .engine import Engine
from .observability import Metrics, RequestContextMiddleware
from .service import Reranker

__all__ = ["create_app"]


async def _load_in_background(reranker: Reranker, on_failure: Callable[[str], None] | None) -> None:
    device_lock = threading.Lock()  # every model runs on the same device: one forward pass at a time
    for spec in reranker.specs:
        if spec.name in reranker.engines:
            continue
        try:
            load = partial(Engine.load, reranker.settings, spec, device_lock=device_lock)
            engine = await anyio.to_thread.run_sync(load, abandon_on_cancel=True)
        except Exception as exc:  # ModelLoadError, ConfigError, or anything a library raised
            reranker.load_errors[spec.name] = str(exc)
            logger.error("model {} failed to load: {}", spec.name, exc)
            if on_failure is not None:
                on_failure(str(exc))
            return
        reranker.attach(engine)


def create_app(
    settings: Settings | None = None,
    *,
    engines: Sequence[Engine] = (),
    on_load_failure: Callable[[str], None] | None = None,
) -> FastAPI:
    """Build the app. ``engines`` skips loading those models (tests inject them); ``on_load_failure``
    is how ``__main__`` learns that a model failed, to stop the server with a non-zero exit."""
    settings = settings or load_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        reranker = Reranker(settings, engines, metrics=metrics)
        app.state.reranker = reranker
        loader = None
        if not reranker.ready:
            loader = asyncio.create_task(_load_in_background(reranker, on_load_failure))
        try:
            yield
        finally:
            if loader is not None and not loader.done():
                loader.cancel()
            for engine in list(reranker.engines.values()):
                await anyio.to_thread.run_sync(engine.stop)

    metrics = Metrics()
    # FastAPIOffline: Swagger UI and ReDoc from assets bundled in the package, not a CDN, so
    # /docs renders on an air-gapped machine.
    app = FastAPIOffline(
        title="reranker-serve",
        version=__version__,
        summary="Cross-encoder reranking behind the native, TEI, Cohere and Jina rerank APIs.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    if settings.cors_origins:  # off unless configured: a browser page should not call us by default
        app.add_middleware(
            CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", "X-Request-ID"],
        )
    app.add_middleware(RequestContextMiddleware, metrics=metrics)
    # The key requirement appears in the OpenAPI schema only when a key is configured, so the
    # schema describes this server as it runs (generated tests hold it to that).
    secured = [Security(bearer_scheme)] if settings.api_key else []
    for module in (native, cohere, jina):
        app.include_router(module.router, dependencies=secured)
    app.include_router(system.router)
    return app
