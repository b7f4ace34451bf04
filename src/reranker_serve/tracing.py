"""OpenTelemetry traces of rerank requests, sent over OTLP (optional: ``reranker-serve[otel]``).

On when RERANKER_OTLP_ENDPOINT is set. Off, nothing of OpenTelemetry is imported and the request
path pays one ``is None`` test: no middleware, no spans, no context.

One trace per rerank request, continuing the caller's trace when it sends W3C ``traceparent``:

    POST /rerank                 SERVER span: the whole request (middleware below)
    ├── parse                    arrival → the service has the query: API key, body read, JSON
    │                            and schema validation, the dialect's translation
    ├── tokenize                 the engine's time outside the queue and forward passes (below)
    ├── queue wait               admission → the first batch carrying the request's pairs
    ├── forward                  forward passes carrying its pairs (sum of their durations)
    └── rank                     activation, sort, top_n

The batcher runs the model in its own thread, so the engine's phases are not timed with spans
as they happen: the engine already reports ``queue_time`` and ``inference_time`` and times its
call (``EngineScores``), and the spans are laid out afterwards with explicit timestamps, ending
at the engine call's end: forward = [end − inference, end], queue wait before it, tokenize
from the call's start to the queue's (it also holds the hop to the tokenizer thread and, when
a request's pairs ride in several batches, the batches of others between them). A request
answered wholly from the score cache has no tokenize/queue/forward spans.

Attributes: ``http.*``/``url.path`` (HTTP semantic conventions), ``reranker.request_id`` (the
X-Request-ID the reply carries), ``reranker.dialect``, ``reranker.model``,
``reranker.documents``, ``reranker.tokens``, ``reranker.cache.hits``/``.misses``.

Everything else is OpenTelemetry's standard configuration, read by its SDK: OTEL_SERVICE_NAME
(default here: reranker-serve), OTEL_RESOURCE_ATTRIBUTES, OTEL_TRACES_SAMPLER(_ARG),
OTEL_EXPORTER_OTLP_HEADERS / _TIMEOUT / _COMPRESSION / _CERTIFICATE, OTEL_PROPAGATORS.
"""

from __future__ import annotations

import importlib.util
import time
from typing import TYPE_CHECKING, Any, Collection, Mapping
from urllib.parse import urlsplit

from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import __version__

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Span

    from .engine import EngineScores

__all__ = ["RequestSpans", "Tracing", "check_endpoint", "check_protocol"]

_INSTALL = "pip install 'reranker-serve[otel]'"


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False


def check_endpoint(value: str) -> str:
    """RERANKER_OTLP_ENDPOINT: a URL, with the OpenTelemetry SDK installed."""
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError("must be a URL such as http://otel-collector:4318 (http/protobuf) or :4317 (grpc)")
    if not _installed("opentelemetry.sdk.trace"):
        raise ValueError(f"tracing needs the OpenTelemetry SDK, which is not installed: {_INSTALL}")
    return value


_EXPORTERS = {
    "http/protobuf": "opentelemetry.exporter.otlp.proto.http.trace_exporter",
    "grpc": "opentelemetry.exporter.otlp.proto.grpc.trace_exporter",
}


def check_protocol(protocol: str, *, endpoint: str | None) -> str:
    """RERANKER_OTLP_PROTOCOL: its exporter must be installed when tracing is on."""
    if endpoint is not None and not _installed(_EXPORTERS[protocol]):
        raise ValueError(f"the OTLP {protocol} exporter is not installed: {_INSTALL}")
    return protocol


def _exporter(endpoint: str, protocol: str) -> SpanExporter:
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

        return GrpcExporter(endpoint=endpoint)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    # A bare collector address means its standard traces path, as OTEL_EXPORTER_OTLP_ENDPOINT does;
    # a URL with a path is used as it is, as OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is.
    if urlsplit(endpoint).path in ("", "/"):
        endpoint = endpoint.rstrip("/") + "/v1/traces"
    return OTLPSpanExporter(endpoint=endpoint)


class Tracing:
    """A tracer provider exporting to one place, and the spans of rerank requests."""

    def __init__(self, exporter: SpanExporter, *, batch: bool = True, instance_id: str | None = None) -> None:
        from opentelemetry import context, propagate, trace
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

        resource = Resource.create({"service.version": __version__,
                                    **({"service.instance.id": instance_id} if instance_id else {})})
        if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
            resource = resource.merge(Resource({"service.name": "reranker-serve"}))
        self.provider = TracerProvider(resource=resource)
        # Batched: spans leave in a background thread, never on the request path.
        self.provider.add_span_processor(BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter))
        self.tracer = self.provider.get_tracer("reranker_serve", __version__)
        self._trace, self._context, self._propagate = trace, context, propagate
        self._server, self._error = trace.SpanKind.SERVER, trace.Status(trace.StatusCode.ERROR)

    @classmethod
    def from_settings(cls, settings: Any, *, exporter: SpanExporter | None = None) -> Tracing | None:
        """None (tracing off) unless RERANKER_OTLP_ENDPOINT is set or ``exporter`` is given (tests)."""
        if exporter is not None:
            return cls(exporter, batch=False, instance_id=settings.instance_id)
        if settings.otlp_endpoint is None:
            return None
        return cls(_exporter(settings.otlp_endpoint, settings.otlp_protocol), instance_id=settings.instance_id)

    def shutdown(self) -> None:
        """Send what is still buffered, then stop (the app's shutdown)."""
        self.provider.shutdown()

    # -- the SERVER span of a request (RequestSpans) ---------------------------------------------------
    def start_request(self, name: str, *, headers: Mapping[str, str],
                      attributes: dict[str, Any]) -> tuple[Span, object]:
        """Start a request's SERVER span and make it current; returns it and the token
        ``end_request`` takes. Its parent: the server span around us (FastAPI's own telemetry or
        an ASGI instrumentation, when configured, would be one), else the caller's trace, if it
        sent W3C ``traceparent``."""
        parent = self._context.get_current()
        if not self._trace.get_current_span(parent).get_span_context().is_valid:
            parent = self._propagate.extract(headers)
        span = self.tracer.start_span(name, context=parent, kind=self._server, start_time=time.time_ns(),
                                      attributes=attributes)
        return span, self._context.attach(self._trace.set_span_in_context(span))

    def end_request(self, span: Span, token: object, *, status: int, attributes: dict[str, Any]) -> None:
        """Restore the context ``start_request`` replaced, then end ``span`` with the reply's
        ``status`` (only 5xx is an error: HTTP semantic conventions) and ``attributes``."""
        self._context.detach(token)
        span.set_attribute("http.response.status_code", status)
        span.set_attributes(attributes)
        if status >= 500:
            span.set_status(self._error)
        span.end()

    # -- the service's spans -------------------------------------------------------------------------
    def record(self, *, entered_ns: int, engine: EngineScores | None, rank: tuple[int, int],
               attributes: dict[str, Any]) -> None:
        """The children of the current request span, laid out from measured timestamps."""
        parent = self._trace.get_current_span()
        if not parent.is_recording():
            return
        parent.set_attributes(attributes)
        ctx = self._trace.set_span_in_context(parent)
        started = getattr(parent, "start_time", None)
        if started is not None and started <= entered_ns:
            self._span("parse", ctx, started, entered_ns)
        if engine is not None:
            end = engine.ended_ns
            forward = end - min(int(engine.inference_time * 1e9), end - engine.started_ns)
            queued = max(engine.started_ns, forward - int(engine.queue_time * 1e9))
            self._span("tokenize", ctx, engine.started_ns, queued)
            self._span("queue wait", ctx, queued, forward)
            self._span("forward", ctx, forward, end, {"reranker.inference_seconds": engine.inference_time})
        self._span("rank", ctx, *rank)

    def _span(self, name: str, ctx: Any, start: int, end: int, attributes: dict[str, Any] | None = None) -> None:
        self.tracer.start_span(name, context=ctx, start_time=start, attributes=attributes).end(end_time=end)


class RequestSpans:
    """The SERVER span of each request to one of ``paths`` (the rerank routes). Pure ASGI, like
    RequestContextMiddleware, which must run outside it: the request id comes from the scope
    state that one fills."""

    def __init__(self, app: ASGIApp, *, tracing: Tracing, paths: Collection[str]) -> None:
        self.app = app
        self.tracing = tracing
        # Route templates (NIM's /v1/retrieval/{model}/reranking) matched as the router does.
        self.routes = [compile_path(path)[0] for path in paths]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not any(route.match(path) for route in self.routes):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers") or ()}
        method = scope.get("method", "POST")
        state = scope.setdefault("state", {})
        span, token = self.tracing.start_request(
            f"{method} {path}", headers=headers,
            attributes={"http.request.method": method, "url.path": path, "http.route": path,
                        "reranker.request_id": state.get("request_id", "")},
        )
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            # The matched route and its dialect, as the route recorded them (api/common.dialect_route).
            self.tracing.end_request(span, token, status=status, attributes={
                "http.route": state.get("route", path), "reranker.dialect": state.get("dialect", path)})
