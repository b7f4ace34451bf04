"""Metrics (Prometheus), logs (loguru, text or JSON lines) and the per-request context.

Every request gets a request id (the client's `X-Request-ID` if it sent one), echoed in the
reply headers and carried by every log line written while it is handled; one access line is
logged per request. Python's standard logging (uvicorn, transformers, huggingface_hub) is routed
into the same loguru sink, so there is one format and one place to look.
"""

from __future__ import annotations

import json
import logging
import sys
import time
import traceback
import uuid
from typing import Any

from loguru import logger
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["Metrics", "RequestContextMiddleware", "configure_logging"]

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Metrics:
    """The service's Prometheus metrics, in a registry of its own (one per app)."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter(
            "reranker_requests", "HTTP requests by dialect, route, status and API key name", ["dialect", "route", "status", "key"],
            registry=r,
        )
        self.latency = Histogram(
            "reranker_request_duration_seconds", "End-to-end request time", ["dialect"],
            buckets=_LATENCY_BUCKETS, registry=r,
        )
        # Per served model (label `model`: the name replies carry).
        self.queue_wait = Histogram(
            "reranker_queue_wait_seconds", "Time a request waited for its first batch", ["model"],
            buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.inference = Histogram(
            "reranker_inference_seconds", "Forward-pass time spent on a request's batches", ["model"],
            buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.documents = Counter("reranker_documents", "Documents scored", ["model"], registry=r)
        self.tokens = Counter("reranker_tokens", "Tokens fed to the model", ["model"], registry=r)
        self.batch_pairs = Histogram(
            "reranker_batch_size", "Pairs per forward pass", ["model"],
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),  # CUDA batches reach 1,024 pairs
            registry=r,
        )
        self.batch_tokens = Histogram(
            "reranker_batch_tokens", "Tokens per forward pass (padded: pairs x longest pair; unpadded: real tokens)",
            ["model"], buckets=(64, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536), registry=r,
        )
        self.queue_depth = Gauge("reranker_queue_depth", "Pairs waiting for the model", ["model"], registry=r)
        self.model_load = Gauge("reranker_model_load_seconds", "Time taken to load and warm up the model", ["model"],
                                registry=r)
        self.auth_failures = Counter("reranker_auth_failures", "Requests refused for a missing or wrong API key",
                                     ["dialect"], registry=r)
        # The score cache (cache.py): hits and misses per model, in documents; size of the whole cache.
        self.cache_hits = Counter("reranker_cache_hits", "Documents whose score came from the score cache", ["model"],
                                  registry=r)
        self.cache_misses = Counter("reranker_cache_misses", "Documents looked up in the score cache and not found",
                                    ["model"], registry=r)
        self.cache_evictions = Counter("reranker_cache_evictions", "Scores dropped from the full cache (LRU)",
                                       registry=r)
        self.cache_bytes = Gauge("reranker_cache_bytes", "Memory held by the score cache", registry=r)
        self.cache_entries = Gauge("reranker_cache_entries", "Scores held by the score cache", registry=r)
        # RERANKER_REDIS_URL (shared.py): operations that used local state because Redis could not be reached.
        self.redis_fallbacks = Counter("reranker_redis_fallbacks", "Limit checks (limits) and cache lookups (cache) "
                                       "that fell back to this server's own state: Redis unreachable", ["operation"],
                                       registry=r)

    def observe_batch(self, model: str, pairs: int, padded_tokens: int) -> None:
        self.batch_pairs.labels(model).observe(pairs)
        self.batch_tokens.labels(model).observe(padded_tokens)

    def observe_request(self, model: str, *, documents: int, tokens: int, queue_time: float,
                        inference_time: float) -> None:
        self.documents.labels(model).inc(documents)
        self.tokens.labels(model).inc(tokens)
        self.queue_wait.labels(model).observe(queue_time)
        self.inference.labels(model).observe(inference_time)


# -- request context ----------------------------------------------------------------------------
_PROBES = frozenset({"/health", "/ready", "/metrics"})
_DIALECTS = {"/rerank": "native", "/v1/rerank": "cohere-v1", "/v2/rerank": "cohere-v2", "/api/v1/rerank": "jina"}


class RequestContextMiddleware:
    """Request id, access log line and request metrics, for every HTTP request.

    A pure ASGI middleware (not BaseHTTPMiddleware): it must not buffer bodies or break the
    disconnect detection of the rerank routes.
    """

    def __init__(self, app: ASGIApp, *, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = dict(scope.get("headers") or ()).get(b"x-request-id", b"").decode("latin-1").strip()
        request_id = incoming[:128] if incoming else uuid.uuid4().hex
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        status = 500
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode("latin-1"))]
            await send(message)

        with logger.contextualize(request_id=request_id):
            try:
                await self.app(scope, receive, send_with_id)
            finally:
                elapsed = time.perf_counter() - started
                path = scope.get("path", "")
                route = path if path in _DIALECTS or path in ("/health", "/ready", "/info", "/metrics") else "other"
                dialect = state.get("dialect") or _DIALECTS.get(path, "system")
                key = state.get("key_name") or ""  # a key's name (RERANKER_API_KEYS), never the key
                self.metrics.requests.labels(dialect, route, str(status), key).inc()
                if route in _DIALECTS:
                    self.metrics.latency.labels(dialect).observe(elapsed)
                    if status == 401:
                        self.metrics.auth_failures.labels(dialect).inc()
                client = scope.get("client")
                # Probes and scrapes (daemon.sh's readiness polls, orchestrators' health checks,
                # Prometheus) arrive every few seconds: at INFO they would bury the real traffic.
                level = "DEBUG" if path in _PROBES else "INFO"
                logger.bind(access=True, **({"key": key} if key else {})).log(
                    level, "{} {} {} {:.1f}ms {}{}", scope.get("method"), path, status, elapsed * 1000,
                    f"{client[0]}:{client[1]}" if client else "-", f" key={key}" if key else "",
                )


# -- logging ------------------------------------------------------------------------------------
# Messages libraries print on every model load that mislead here: our encoders are loaded for
# inference (no loss is ever computed), and CrossEncoder "initializing a new model" is
# sentence-transformers' word for reading a plain transformers folder, which is what we give it.
_MISLEADING = (
    ("transformers", "was set in the config but it is unrecognized. Using the default loss"),
    ("sentence_transformers", "No modules.json found"),
    ("sentence_transformers", "No sentence-transformers model found"),
)


class _InterceptHandler(logging.Handler):
    """Standard-library records into loguru (the recipe from loguru's documentation)."""

    def emit(self, record: logging.LogRecord) -> None:
        if any(record.name.startswith(name) and text in record.getMessage() for name, text in _MISLEADING):
            return
        try:
            level: str | int = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        frame, depth = logging.currentframe(), 2
        while frame and frame.f_code.co_filename == logging.__file__:
            frame, depth = frame.f_back, depth + 1
        logger.opt(depth=depth, exception=record.exc_info).bind(logger_name=record.name).log(level, record.getMessage())


def _json_sink(message: Any) -> None:
    record = message.record
    line: dict[str, Any] = {
        "time": record["time"].isoformat(),
        "level": record["level"].name,
        "message": record["message"],
        "logger": record["extra"].get("logger_name", record["name"]),
        "pid": record["process"].id,  # several workers write one log
    }
    line.update((k, v) for k, v in record["extra"].items() if k != "logger_name")
    if record["exception"] is not None:
        line["exception"] = "".join(traceback.format_exception(*record["exception"])).rstrip()
    sys.stderr.write(json.dumps(line, default=str) + "\n")


_TEXT_FORMAT = (
    "<green>{time:YYYY-MM-DD HH:mm:ss.SSS}</green> | <level>{level: <8}</level> | "
    "{extra[request_id]} | <level>{message}</level>"
)


def configure_logging(*, level: str = "info", fmt: str = "text") -> None:
    """One sink for everything: ours, uvicorn's and the libraries'. Idempotent."""
    logger.remove()
    logger.configure(extra={"request_id": "-"})
    if fmt == "json":
        logger.add(_json_sink, level=level.upper(), backtrace=False, diagnose=False)
    else:
        logger.add(sys.stderr, level=level.upper(), format=_TEXT_FORMAT, backtrace=False, diagnose=False)
    logging.basicConfig(handlers=[_InterceptHandler()], level=0, force=True)
    logging.captureWarnings(True)  # library warnings are log lines too, not stray stderr text
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "fastapi"):
        lib = logging.getLogger(name)
        lib.handlers = []
        lib.propagate = True
    # Our middleware writes the access line (with the request id); uvicorn's would be a duplicate.
    logging.getLogger("uvicorn.access").disabled = True
    # Libraries that give their logger a stderr handler of their own would print each line twice
    # (once raw, once through our sink): huggingface_hub's retry warnings, transformers' messages.
    # They add that handler when first imported, so import them first (after the offline
    # environment is set: huggingface_hub reads HF_HUB_OFFLINE on import).
    import huggingface_hub.utils.logging  # noqa: F401
    from transformers.utils import logging as hf_logging

    hf_logging.disable_default_handler()
    hf_logging.enable_propagation()
    for name in ("huggingface_hub", "transformers", "sentence_transformers"):
        lib = logging.getLogger(name)
        lib.handlers = []
        lib.propagate = True
