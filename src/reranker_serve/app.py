"""The app factory. The lifespan builds the engines; routes reach them through ``app.state``.

The models load in the background, one after the other, after the server starts listening, so
`/health` answers at once and `/ready` turns 200 only when every model is loaded and warmed
(orchestrators and daemon.sh wait on it); a model still loading answers 503 with Retry-After.
"""

from __future__ import annotations

import asyncio
import os
import signal
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, AsyncIterator, Callable, Sequence

from fastapi import FastAPI, Request, Response, Security
from fastapi.exception_handlers import http_exception_handler
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from fastapi_offline import FastAPIOffline
from starlette.exceptions import HTTPException as StarletteHTTPException

from . import __version__
from .api import cohere, infinity, jina, mixedbread, native, nim, system
from .api.common import bearer_scheme
from .api.dialect import Dialect
from .config import Settings, load_settings
from .engine import Engine
from .errors import ErrorKind, RerankError
from .keys import BUCKETS_FILE_VARIABLE, KeyLimits, KeyRing, RateLimiter
from .observability import MULTIPROCESS_VARIABLE, Metrics, RequestContextMiddleware, serve_metrics
from .registry import ModelRegistry
from .security import AuthThrottle, HostGuard, SystemRouteGuard, allowed_hosts
from .service import RerankService
from .tracing import RequestSpans, Tracing

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter

__all__ = ["create_app"]


def _dialect_errors(app: FastAPI, dialects: Sequence[Dialect]) -> None:
    """404 and 405 on a dialect's paths in that dialect's shape (FastAPI's is `{"detail": ...}`),
    and an OpenAPI document whose error statuses are the ones each route really answers."""

    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        dialect = next((d for d in dialects if d.owns(request.url.path)), None)
        if dialect is None or exc.status_code not in (404, 405):
            return await http_exception_handler(request, exc)
        if exc.status_code == 405:
            error = RerankError(ErrorKind.METHOD_NOT_ALLOWED, f"{request.method} is not allowed on "
                                f"{request.url.path}: send the request with POST", headers=exc.headers)
        else:
            error = RerankError(ErrorKind.ROUTE_NOT_FOUND, f"no route {request.url.path}")
        return dialect.render(error)

    app.add_exception_handler(StarletteHTTPException, http_error)  # type: ignore[arg-type]
    generate = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = generate()
            for dialect in dialects:
                dialect.document(schema)
        return app.openapi_schema  # type: ignore[return-value]

    app.openapi = openapi  # type: ignore[method-assign]


def _renderer(dialects: Sequence[Dialect]) -> Callable[[str, RerankError], Response]:
    """An error for a path, in the shape of the dialect that owns it (else FastAPI's `detail`)."""

    def render(path: str, error: RerankError) -> Response:
        dialect = next((d for d in dialects if d.owns(path)), None)
        if dialect is None:
            return JSONResponse({"detail": error.message}, status_code=error.kind.status, headers=error.headers)
        return dialect.render(error)

    return render


def create_app(
    settings: Settings | None = None,
    *,
    engines: Sequence[Engine] = (),
    on_load_failure: Callable[[str], None] | None = None,
    span_exporter: SpanExporter | None = None,
) -> FastAPI:
    """Build the app. ``engines`` skips loading those models (tests inject them); ``on_load_failure``
    is how ``__main__`` learns that a model failed, to stop the server with a non-zero exit;
    ``span_exporter`` turns tracing on with that exporter (tests), whatever the settings say."""
    settings = settings or load_settings()
    tracing = Tracing.from_settings(settings, exporter=span_exporter)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        registry = ModelRegistry(settings, engines, metrics=metrics)
        app.state.registry = registry
        # Worker processes share one bucket memory (made by __main__), so a key's limits hold server-wide.
        app.state.limiter = RateLimiter(os.environ.get(BUCKETS_FILE_VARIABLE))
        shared = None
        if settings.redis_url:  # replicas share limits and scores (shared.py)
            from .shared import SharedState

            shared = SharedState(settings.redis_url, prefix=settings.redis_prefix, timeout=settings.redis_timeout,
                                 cache_ttl=settings.redis_cache_ttl, metrics=metrics)
            await shared.check()
        app.state.limits = KeyLimits(app.state.limiter, shared=shared)
        app.state.reranker = RerankService(registry, tracing=tracing, limits=app.state.limits, shared=shared)
        readiness: WorkerReadiness | None = app.state.readiness
        # With several workers the parent serves RERANKER_METRICS_PORT (summed over them all).
        scraped = None
        if settings.metrics_port and metrics.multiprocess_dir is None:
            scraped = serve_metrics(host=settings.host, port=settings.metrics_port, registry=metrics.registry)

        async def load() -> None:
            await registry.load(on_failure=on_load_failure)
            if registry.ready and readiness is not None:
                readiness.mark()

        loader = None
        if not registry.ready:
            loader = asyncio.create_task(load())
        elif readiness is not None:
            readiness.mark()
        try:
            # SIGHUP re-reads the key file at once (a changed file is also picked up within a second).
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, app.state.keys.reload)
        except (RuntimeError, ValueError, NotImplementedError):  # not the main thread (tests), or no signals
            pass
        try:
            yield
        finally:
            if loader is not None and not loader.done():
                loader.cancel()
            await registry.close()
            app.state.limiter.close()
            if shared is not None:
                await shared.close()
            if scraped is not None:
                scraped.shutdown()
                scraped.server_close()
            if tracing is not None:
                tracing.shutdown()

    metrics = Metrics(multiprocess_dir=os.environ.get(MULTIPROCESS_VARIABLE))
    # FastAPIOffline: Swagger UI and ReDoc from assets bundled in the package, not a CDN, so
    # /docs renders on an air-gapped machine.
    app = FastAPIOffline(
        title="reranker-serve",
        version=__version__,
        summary="Cross-encoder reranking behind the native, TEI, Cohere, Jina, Voyage, NVIDIA NIM, Mixedbread and "
        "Infinity rerank APIs.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.readiness = None  # several worker processes: create_worker_app sets it
    app.state.keys = KeyRing(settings.api_keys, single_key=settings.api_key)
    app.state.auth_throttle = AuthThrottle(settings.auth_failures_per_minute)
    if settings.cors_origins:  # off unless configured: a browser page should not call us by default
        app.add_middleware(
            CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", "X-Request-ID", "X-Priority", "Cache-Control", "traceparent"],
        )
    # Ahead of Cohere's: the first dialect that owns a path answers its 404s and 405s, and Cohere
    # owns every other path under /v1/.
    dialects = [native.dialect, nim.dialect, mixedbread.dialect, infinity.dialect, cohere.dialect, jina.dialect]
    # Inside the request context (refusals are logged with their id), outside everything else.
    app.add_middleware(SystemRouteGuard, keys=app.state.keys, throttle=app.state.auth_throttle)
    app.add_middleware(HostGuard, hosts=allowed_hosts(settings), render=_renderer(dialects))
    if tracing is not None:  # inside RequestContextMiddleware: its request id is on the spans
        app.add_middleware(RequestSpans, tracing=tracing, paths=[p for d in dialects for p in d.paths])
    app.add_middleware(RequestContextMiddleware, metrics=metrics)
    # The key requirement appears in the OpenAPI schema only when a key is configured, so the
    # schema describes this server as it runs (generated tests hold it to that).
    secured = [Security(bearer_scheme)] if app.state.keys.enabled else []
    for dialect in dialects:
        app.include_router(dialect.router, dependencies=secured)
    app.include_router(system.router)
    _dialect_errors(app, dialects)
    return app


# How a worker process (RERANKER_WORKERS > 1, or --reload) tells `python -m reranker_serve` that
# its model failed to load: the message goes to this file, and the worker exits with uvicorn's
# start-up failure code, which makes uvicorn's supervisor stop every worker instead of
# restarting this one (and loading the broken model again, forever).
FAILURE_FILE_VARIABLE = "_RERANKER_SERVE_FAILURE_FILE"
_STARTUP_FAILURE = 3  # uvicorn.server.STARTUP_FAILURE


# How worker processes tell each other they are ready: each creates a file named by its pid in
# this folder (made by __main__) once its models are loaded and warmed up, and /ready is 200
# only when every live worker has. Each worker accepts connections while it loads (so /health
# answers), so without this a client that waited for /ready could reach a worker still warming
# up and get 503.
READY_DIR_VARIABLE = "_RERANKER_SERVE_READY_DIR"


class WorkerReadiness:
    """The ready workers of a multi-process server, counted from pid files in one folder."""

    def __init__(self, folder: str, workers: int) -> None:
        self.folder, self.workers = folder, workers

    def mark(self) -> None:
        Path(self.folder, str(os.getpid())).touch()

    def all_ready(self) -> bool:
        ready = 0
        for entry in os.scandir(self.folder):
            try:
                os.kill(int(entry.name), 0)  # a worker that died (and was replaced) does not count
            except (ValueError, ProcessLookupError):
                continue
            except PermissionError:
                pass  # alive, someone else's
            ready += 1
        return ready >= self.workers


def create_worker_app() -> FastAPI:
    """The app factory of worker processes (``uvicorn ... --factory``): each is a fresh
    interpreter, so it sets up offline mode and logging itself, as ``__main__`` does."""
    from loguru import logger

    from .config import apply_offline_environment
    from .observability import configure_logging

    settings = load_settings()
    apply_offline_environment(offline=settings.use_offline_mode)
    configure_logging(level=settings.log_level, fmt=settings.log_format)

    def stop_everything(message: str) -> None:
        path = os.environ.get(FAILURE_FILE_VARIABLE)
        if path:
            with open(path, "a", encoding="utf-8") as out:
                out.write(message + "\n")
        logger.complete()
        os._exit(_STARTUP_FAILURE)

    app = create_app(settings, on_load_failure=stop_everything)
    folder = os.environ.get(READY_DIR_VARIABLE)
    if folder:
        app.state.readiness = WorkerReadiness(folder, settings.workers)
    return app
