"""OpenTelemetry tracing: the spans of a rerank request (in-memory exporter), their structure and
timings, the request id and the caller's trace; a real OTLP/HTTP export; nothing when off."""

from __future__ import annotations

import http.server
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from reranker_serve.app import create_app
from reranker_serve.config import ConfigError, load_settings
from conftest import DOCS, QUERY, RunningServer, settings_for
from procs import free_port

CHILDREN = ["parse", "tokenize", "queue wait", "forward", "rank"]
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


@pytest.fixture(scope="module")
def traced(tiny_model: Path):
    exporter = InMemorySpanExporter()
    srv = RunningServer(create_app(settings_for(tiny_model, cache_mb=4), span_exporter=exporter))
    yield srv, exporter
    srv.stop()


def request_spans(exporter: InMemorySpanExporter, request_id: str) -> tuple:
    """The request span with this id, and its children by name."""
    spans = exporter.get_finished_spans()
    [root] = [s for s in spans if s.attributes.get("reranker.request_id") == request_id]
    children = {s.name: s for s in spans if s.parent is not None and s.parent.span_id == root.context.span_id}
    return root, children


def test_a_request_is_a_span_with_its_phases_as_children(traced):
    srv, exporter = traced
    exporter.clear()
    r = srv.client.post("/rerank", json={"query": QUERY, "documents": DOCS},
                        headers={"X-Request-ID": "trace-1", "traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"})
    assert r.status_code == 200
    root, children = request_spans(exporter, "trace-1")
    assert root.name == "POST /rerank" and root.kind is SpanKind.SERVER
    # The caller's trace goes on: same trace id, its span is our parent.
    assert format(root.context.trace_id, "032x") == TRACE_ID and format(root.parent.span_id, "016x") == PARENT_ID
    assert root.attributes["http.response.status_code"] == 200
    assert root.attributes["reranker.dialect"] == "native" and root.attributes["reranker.model"] == "tiny-reranker"
    assert root.attributes["reranker.documents"] == len(DOCS)
    assert root.attributes["reranker.tokens"] == int(r.headers["x-compute-tokens"])
    assert (root.attributes["reranker.cache.hits"], root.attributes["reranker.cache.misses"]) == (0, len(DOCS))
    assert sorted(children) == sorted(CHILDREN)
    assert all(c.context.trace_id == root.context.trace_id for c in children.values())
    # Every phase lies within the request, in order, without overlap.
    phases = [children[name] for name in CHILDREN]
    assert root.start_time <= phases[0].start_time
    for before, after in zip(phases, phases[1:]):
        assert before.start_time <= before.end_time <= after.start_time, (before.name, after.name)
    assert phases[-1].end_time <= root.end_time
    # The forward span lasts what the engine reports (X-Inference-Time, ms with 2 decimals).
    forward_ms = (children["forward"].end_time - children["forward"].start_time) / 1e6
    assert forward_ms == pytest.approx(float(r.headers["x-inference-time"]), abs=0.01)
    queue_ms = (children["queue wait"].end_time - children["queue wait"].start_time) / 1e6
    assert queue_ms == pytest.approx(float(r.headers["x-queue-time"]), abs=0.01)
    assert (root.end_time - root.start_time) / 1e6 >= forward_ms + queue_ms


def test_a_request_answered_from_the_cache_has_no_engine_spans(traced):
    srv, exporter = traced
    body = {"query": QUERY, "texts": ["Cached for tracing."]}
    srv.client.post("/rerank", json=body)
    exporter.clear()
    srv.client.post("/rerank", json=body, headers={"X-Request-ID": "trace-2"})
    root, children = request_spans(exporter, "trace-2")
    assert sorted(children) == ["parse", "rank"]
    assert root.attributes["reranker.dialect"] == "tei" and root.attributes["reranker.cache.hits"] == 1


def test_a_route_with_a_path_parameter_is_traced_as_its_template(traced):
    # NIM's /v1/retrieval/{model}/reranking: matched as the router matches, labelled by its template.
    srv, exporter = traced
    exporter.clear()
    r = srv.client.post("/v1/retrieval/nvidia/llama-3.2-nv-rerankqa-1b-v2/reranking",
                        json={"query": {"text": QUERY}, "passages": [{"text": d} for d in DOCS]},
                        headers={"X-Request-ID": "trace-nim", "Cache-Control": "no-cache"})  # every phase runs
    assert r.status_code == 200, r.text
    root, children = request_spans(exporter, "trace-nim")
    assert root.attributes["http.route"] == "/v1/retrieval/{model}/reranking"
    assert root.attributes["reranker.dialect"] == "nim"
    assert sorted(children) == sorted(CHILDREN)


def test_failed_requests_and_other_routes(traced):
    srv, exporter = traced
    exporter.clear()
    r = srv.client.post("/v1/rerank", json={"query": QUERY}, headers={"X-Request-ID": "trace-3"})
    assert r.status_code == 400  # Cohere's status for a bad body
    root, children = request_spans(exporter, "trace-3")
    assert root.attributes["http.response.status_code"] == 400 and root.attributes["reranker.dialect"] == "cohere-v1"
    assert root.status.status_code is not StatusCode.ERROR  # a client's mistake is not the server's error
    assert children == {}
    srv.client.get("/health")
    srv.client.get("/metrics")
    assert len(exporter.get_finished_spans()) == 1  # probes and scrapes are not traced


class _Collector(http.server.ThreadingHTTPServer):
    """An OTLP/HTTP receiver: keeps the export requests POSTed to /v1/traces."""

    def __init__(self) -> None:
        self.received: list[ExportTraceServiceRequest] = []
        collector = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["content-length"]))
                if self.path == "/v1/traces":
                    collector.received.append(ExportTraceServiceRequest.FromString(body))
                self.send_response(200 if self.path == "/v1/traces" else 404)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()


def test_spans_are_exported_over_otlp(tiny_model, monkeypatch):
    collector = _Collector()
    monkeypatch.setenv("OTEL_SERVICE_NAME", "rerank-for-team-a")
    endpoint = f"http://127.0.0.1:{collector.server_address[1]}"
    srv = RunningServer(create_app(settings_for(tiny_model, otlp_endpoint=endpoint)))
    try:
        assert srv.client.post("/api/v1/rerank", json={"query": QUERY, "documents": DOCS},
                               headers={"X-Request-ID": "exported-1"}).status_code == 200
    finally:
        srv.stop()  # the app's shutdown sends what is buffered
    collector.shutdown()
    spans, services = [], set()
    for export in collector.received:
        for resource_spans in export.resource_spans:
            services |= {a.value.string_value for a in resource_spans.resource.attributes if a.key == "service.name"}
            spans += [s for scope in resource_spans.scope_spans for s in scope.spans]
    assert services == {"rerank-for-team-a"}
    [root] = [s for s in spans if s.name == "POST /api/v1/rerank"]
    attributes = {a.key: a.value for a in root.attributes}
    assert attributes["reranker.request_id"].string_value == "exported-1"
    assert sorted(s.name for s in spans if s.parent_span_id == root.span_id) == sorted(CHILDREN)


def test_the_endpoint_is_checked_at_start_up(monkeypatch):
    with pytest.raises(ConfigError, match="RERANKER_OTLP_ENDPOINT: must be a URL"):
        load_settings(_env_file=None, otlp_endpoint="collector:4318")
    # None in sys.modules: Python's own way to make a module not importable, as if not installed.
    monkeypatch.setitem(sys.modules, "opentelemetry.sdk.trace", None)
    with pytest.raises(ConfigError, match=r"RERANKER_OTLP_ENDPOINT: .*pip install 'reranker-serve\[otel\]'"):
        load_settings(_env_file=None, otlp_endpoint="http://collector:4318")
    assert load_settings(_env_file=None, otlp_endpoint="").otlp_endpoint is None  # off, SDK or not


def test_off_imports_no_opentelemetry_sdk(tiny_model):
    """Off (the default), serving a request loads no OpenTelemetry SDK or exporter, and no
    module of ours that uses one: tracing costs nothing. (FastAPI itself imports the small
    OpenTelemetry API when it is installed, for its own optional telemetry.)"""
    script = f"""
import sys, time
sys.path.insert(0, {str(Path(__file__).parent)!r})
from starlette.testclient import TestClient
from reranker_serve.app import create_app
from conftest import settings_for
# localhost: a loopback server serves loopback Host names only (RERANKER_ALLOWED_HOSTS), not "testserver".
with TestClient(create_app(settings_for({str(tiny_model)!r})), base_url="http://localhost") as client:
    while client.get("/ready").status_code != 200:
        time.sleep(0.05)
    assert client.post("/rerank", json={{"query": "q", "documents": ["d"]}}).status_code == 200
loaded = sorted(m for m in sys.modules if m.startswith(("opentelemetry.sdk", "opentelemetry.exporter")))
assert not loaded, loaded
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
