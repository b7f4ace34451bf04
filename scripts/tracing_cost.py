#!/usr/bin/env python3
"""What tracing adds to a request, in-process: the request span (as the middleware makes it)
and the five phase spans (as the service lays them out), through the real SDK pipeline; then
what encoding them as OTLP protobuf costs (the exporter's work, done in a background thread in
the server, 512 spans at a time). Needs reranker-serve[otel].

    .venv/bin/python scripts/tracing_cost.py
"""

from __future__ import annotations

import time
import timeit

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from reranker_serve.engine import EngineScores
from reranker_serve.tracing import Tracing


class Keep(SpanExporter):
    def __init__(self) -> None:
        self.spans: list = []

    def export(self, spans) -> SpanExportResult:
        self.spans.extend(spans)
        return SpanExportResult.SUCCESS


def main() -> None:
    exporter = Keep()
    tracing = Tracing(exporter, batch=False)  # handed over inline, kept: no export work here
    t, attrs = tracing, {"reranker.model": "m", "reranker.documents": 20, "reranker.tokens": 2000,
                         "reranker.cache.hits": 0, "reranker.cache.misses": 20}

    def request() -> None:
        span, token = t.start_request("POST /rerank", headers={}, attributes={"http.request.method": "POST"})
        now = time.time_ns()
        engine = EngineScores([], 0, 0.001, 0.003, started_ns=now, ended_ns=now + 5_000_000)
        t.record(entered_ns=now, engine=engine, rank=(now, now + 1000), attributes=attrs)
        t.end_request(span, token, status=200, attributes={})

    n = 2000
    best = min(timeit.repeat(request, number=n, repeat=5)) / n
    spans = exporter.spans[-6 * 512:]  # 512 traces: the batch processor's export size
    started = time.perf_counter()
    size = len(encode_spans(spans).SerializePartialToString())
    encode = (time.perf_counter() - started) / 512
    print(f"on the request path: {best * 1e6:.0f} µs per request (6 spans created and ended)")
    print(f"in the exporter's thread: {encode * 1e6:.0f} µs per request to encode, {size / 512:.0f} bytes of OTLP")
    tracing.shutdown()


if __name__ == "__main__":
    main()
