"""Metrics (Prometheus), logs (loguru, text or JSON lines) and the per-request context.

Every request gets a request id (the client's `X-Request-ID` if it sent one), echoed in the
reply headers and carried by every log line written while it is handled; one access line is
logged per request. Python's standard logging (uvicorn, transformers, huggingface_hub) is routed
into the same loguru sink, so there is one format and one place to look.
"""

from __future__ import annotations

import json
import errno
import logging
import os
import re
import sys
import time
import traceback
import uuid
from typing import Any

from loguru import logger
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["Metrics", "RequestContextMiddleware", "configure_logging"]

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


# Set by __main__ for worker processes (RERANKER_WORKERS > 1): prometheus_client's multiprocess
# mode, read by prometheus_client itself when it is imported. Each worker writes its values to
# files there, and a scrape of any worker (or of RERANKER_METRICS_PORT, served by the parent)
# sums every worker's.
MULTIPROCESS_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"


class Metrics:
    """The service's Prometheus metrics, in a registry of its own (one per app); with
    ``multiprocess_dir``, exposed summed over every worker process."""

    def __init__(self, *, multiprocess_dir: str | None = None) -> None:
        self.multiprocess_dir = multiprocess_dir
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
        self.queue_depth = Gauge("reranker_queue_depth", "Pairs waiting for the model", ["model"], registry=r,
                                 multiprocess_mode="livesum")
        self.model_load = Gauge("reranker_model_load_seconds", "Time taken to load and warm up the model", ["model"],
                                registry=r, multiprocess_mode="max")  # the slowest worker's
        self.auth_failures = Counter("reranker_auth_failures", "Requests refused for a missing or wrong API key",
                                     ["dialect"], registry=r)
        # The score cache (cache.py): hits and misses per model, in documents; size of the whole cache.
        self.cache_hits = Counter("reranker_cache_hits", "Documents whose score came from the score cache", ["model"],
                                  registry=r)
        self.cache_misses = Counter("reranker_cache_misses", "Documents looked up in the score cache and not found",
                                    ["model"], registry=r)
        self.cache_evictions = Counter("reranker_cache_evictions", "Scores dropped from the full cache (LRU)",
                                       registry=r)
        self.cache_bytes = Gauge("reranker_cache_bytes", "Memory held by the score cache", registry=r,
                                 multiprocess_mode="livesum")
        self.cache_entries = Gauge("reranker_cache_entries", "Scores held by the score cache", registry=r,
                                   multiprocess_mode="livesum")
        # RERANKER_REDIS_URL (shared.py): operations that used local state because Redis could not be reached.
        self.redis_fallbacks = Counter("reranker_redis_fallbacks", "Limit checks (limits) and cache lookups (cache) "
                                       "that fell back to this server's own state: Redis unreachable", ["operation"],
                                       registry=r)

    def exposition(self) -> bytes:
        """The Prometheus text of this process, or with several workers, of all of them."""
        if self.multiprocess_dir is None:
            return generate_latest(self.registry)
        return generate_latest(summed_registry(self.multiprocess_dir))

    def observe_batch(self, model: str, pairs: int, padded_tokens: int) -> None:
        self.batch_pairs.labels(model).observe(pairs)
        self.batch_tokens.labels(model).observe(padded_tokens)

    def observe_request(self, model: str, *, documents: int, tokens: int, queue_time: float,
                        inference_time: float) -> None:
        self.documents.labels(model).inc(documents)
        self.tokens.labels(model).inc(tokens)
        self.queue_wait.labels(model).observe(queue_time)
        self.inference.labels(model).observe(inference_time)


def summed_registry(folder: str) -> CollectorRegistry:
    """A registry reading every worker's files in ``folder``. The live gauges of workers that
    died (and were replaced) are dropped first: their queue would be counted for ever."""
    from prometheus_client import multiprocess

    for name in os.listdir(folder):
        if name.startswith("gauge_live") and name.endswith(".db"):
            pid = name.rsplit("_", 1)[-1].removesuffix(".db")
            if pid.isdigit() and not _alive(int(pid)):
                multiprocess.mark_process_dead(int(pid), folder)
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=folder)
    return registry


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def serve_metrics(*, host: str, port: int, registry: Any) -> Any:
    """RERANKER_METRICS_PORT: /metrics alone, without a key, on a listener of its own (for
    scrapers that hold no key; bind it where only they reach). Returns the server (``shutdown()``)."""
    from prometheus_client import start_http_server

    server, _ = start_http_server(port, addr=host, registry=registry)
    logger.info("metrics on http://{}:{}/metrics (RERANKER_METRICS_PORT)", host, port)
    return server


# -- request context ----------------------------------------------------------------------------
_PROBES = frozenset({"/health", "/ready", "/metrics"})
# Routes labelled by their own path; a rerank route labels itself (api/common.dialect_route sets
# the scope state's "route" and "dialect"), every other path is "other" (bounded label values).
_SYSTEM_ROUTES = frozenset({"/health", "/ready", "/info", "/metrics", "/v1/models"})


_REQUEST_ID = re.compile(r"[A-Za-z0-9._:/+=@~-]{1,128}")


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
        # A caller's id is kept only when it is a plain token: one with spaces, '|' or control
        # characters would forge the id column of text logs (and the header we echo).
        request_id = incoming if _REQUEST_ID.fullmatch(incoming) else uuid.uuid4().hex
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
                rerank_route = state.get("route")
                route = rerank_route or (path if path in _SYSTEM_ROUTES else "other")
                dialect = state.get("dialect") or "system"
                key = state.get("key_name") or ""  # a key's name (RERANKER_API_KEYS), never the key
                self.metrics.requests.labels(dialect, route, str(status), key).inc()
                if rerank_route:
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
    line.update((k, v) for k, v in record["extra"].items() if k != "logger_name" and not k.startswith("_"))
    if record["exception"] is not None:
        line["exception"] = "".join(traceback.format_exception(*record["exception"])).rstrip()
    _STDERR.write(json.dumps(line, default=str) + "\n")  # json.dumps escapes every control character


# Control characters a caller can put in a text log line (a path's %0A, an ESC sequence that
# clears the terminal of whoever reads `daemon.sh logs`): written as escapes, so one record is
# one line and what is shown is what was sent. C0 but tab, DEL, C1, and Unicode's line breaks.
_CONTROLS = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")
_NAMED = {"\n": "\\n", "\r": "\\r"}


def escape_controls(text: str) -> str:
    """``text`` with its control characters written as ``\\n``, ``\\r``, ``\\x1b``, ``\\u2028``..."""
    if text.isprintable():
        return text
    return _CONTROLS.sub(lambda m: _NAMED.get(m[0]) or (f"\\x{ord(m[0]):02x}" if ord(m[0]) < 0x100
                                                        else f"\\u{ord(m[0]):04x}"), text)


def _text_format(record: Any) -> str:
    extra = record["extra"]
    extra["_message"] = escape_controls(record["message"])
    extra["_request_id"] = escape_controls(str(extra.get("request_id", "-")))
    return ("<green>{time:YYYY-MM-DD HH:mm:ss.SSS}</green> | <level>{level: <8}</level> | "
            "{extra[_request_id]} | <level>{extra[_message]}</level>\n{exception}")


class WholeLines:
    """The log sink's writer: each record in one ``os.write`` of fd 2, so lines are never
    interleaved or cut by a buffer flushing half of one. When the disk is full (ENOSPC, EIO
    from a log file on it) records are dropped rather than stalling the server, counted, said
    once on the way down, and said again with the count when writing works again; a line cut
    short by a partial write is ended before the next, so two records never fuse into one."""

    def __init__(self, fd: int = 2, *, write: Any = os.write) -> None:
        self.fd, self._write = fd, write
        self.dropped = 0
        self._cut = False  # the last write stopped mid-line

    def write(self, text: str) -> None:
        data = text.encode("utf-8", "backslashreplace")
        if self.dropped:
            data = self._note(f"{self.dropped} log lines were lost while the log could not be written") + data
        try:
            self._all(data)
        except OSError as exc:
            if not self.dropped:  # once per outage (most likely lost as well, but try)
                try:
                    self._all(self._note(f"log lines are being dropped: {os.strerror(exc.errno or errno.EIO)}"))
                except OSError:
                    pass
            self.dropped += 1
            return
        self.dropped = 0

    def _all(self, data: bytes) -> None:
        if self._cut:  # end the line a failed write left half-written
            data = b"\n" + data
        while data:
            written = self._write(self.fd, data)
            if not written:
                raise OSError(errno.EIO, os.strerror(errno.EIO))
            else:
                self._cut = data[written - 1:written] != b"\n"
            data = data[written:]

    @staticmethod
    def _note(message: str) -> bytes:
        import datetime

        stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
        return f"{stamp} | WARNING  | - | {message}\n".encode()

    def flush(self) -> None:
        pass


_STDERR = WholeLines()


def configure_logging(*, level: str = "info", fmt: str = "text") -> None:
    """One sink for everything: ours, uvicorn's and the libraries'. Idempotent."""
    logger.remove()
    logger.configure(extra={"request_id": "-"})
    if fmt == "json":
        logger.add(_json_sink, level=level.upper(), backtrace=False, diagnose=False)
    else:
        # colorize as loguru would for sys.stderr itself: colours on a terminal, none in a file.
        logger.add(_STDERR, level=level.upper(), format=_text_format, backtrace=False, diagnose=False,
                   colorize=sys.stderr.isatty())
    logging.basicConfig(handlers=[_InterceptHandler()], level=0, force=True)
    logging.captureWarnings(True)  # library warnings are log lines too, not stray stderr text
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "fastapi"):
        lib = logging.getLogger(name)
        lib.handlers = []
        lib.propagate = True
    # Our middleware writes the access line (with the request id); uvicorn's would be a duplicate.
    logging.getLogger("uvicorn.access").disabled = True
    # The Hugging Face libraries' loggers: bootstrap.route_library_logging (it imports them).
