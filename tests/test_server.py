"""The server as a whole: loading and readiness, overload, deadlines, disconnects, faults."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from reranker_serve.app import create_app
from reranker_serve.engine import Engine
from conftest import DOCS, QUERY, RunningServer, load_error, settings_for
from fakes import FakeModel


def fake_server(tiny_model, model: FakeModel, **overrides) -> RunningServer:
    settings = settings_for(tiny_model, **overrides)
    return RunningServer(create_app(settings, engines=[Engine(model, settings)]))


def test_concurrent_requests_through_the_real_model_match_the_reference(server, reference):
    queries = [QUERY, "Which city is in Germany?", "cats and mats", "neural networks"]
    expected = {q: reference.scores(q, DOCS) for q in queries}
    with ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(lambda q: (q, server.client.post("/rerank", json={"query": q, "documents": DOCS})),
                                queries * 4))
    for q, r in replies:
        assert r.status_code == 200
        for x in r.json()["results"]:
            assert x["relevance_score"] == pytest.approx(expected[q][x["index"]], abs=1e-5)


def test_ready_turns_200_only_after_loading(tiny_model, monkeypatch):
    release = threading.Event()
    real_load = Engine.load

    def slow_load(settings, spec=None, **kw):
        release.wait(30)
        return real_load(settings, spec, **kw)

    monkeypatch.setattr(Engine, "load", staticmethod(slow_load))
    srv = RunningServer(create_app(settings_for(tiny_model)), wait_ready=False)
    try:
        assert srv.client.get("/health").json() == {"status": "ok"}
        r = srv.client.get("/ready")
        assert r.status_code == 503 and r.json() == {"status": "loading"}
        busy = srv.client.post("/v1/rerank", json={"query": QUERY, "documents": DOCS})
        assert busy.status_code == 503 and "still loading" in busy.json()["message"]
        assert busy.headers["retry-after"] == "5"
        assert srv.client.get("/info").json()["ready"] is False
        release.set()
        srv.wait_ready()
        info = srv.client.get("/info").json()
        assert info["ready"] and info["device"] == "cpu" and info["dtype"] == "float32" and info["max_length"] == 128
        assert info["max_batch_tokens"] == 1024  # the CPU default
    finally:
        release.set()
        srv.stop()


def broken_model(tmp_path):
    folder = tmp_path / "broken-model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "xlm-roberta", "architectures": ["XLMRobertaForSequenceClassification"]}))
    return folder  # a config, but no weights and no tokenizer


def test_load_failure_is_reported(tmp_path):
    folder = broken_model(tmp_path)
    srv = RunningServer(create_app(settings_for(folder)), wait_ready=False)
    try:
        assert str(folder) in srv.wait_failed()
        jina = srv.client.post("/api/v1/rerank", json={"query": QUERY, "documents": DOCS})
        assert jina.status_code == 503 and "failed to load" in jina.json()["detail"]
    finally:
        srv.stop()


def test_unsupported_architecture_names_what_was_found(tmp_path):
    folder = tmp_path / "gpt"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}))
    error = load_error(settings_for(folder))
    assert "GPT2LMHeadModel" in error and "not a supported reranker" in error


def test_process_exits_1_when_the_model_does_not_load(tmp_path):
    folder = broken_model(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RERANKER_")}
    env.update(RERANKER_MODEL_PATH=str(folder), RERANKER_PORT="0", RERANKER_USE_OFFLINE_MODE="true")
    proc = subprocess.run([sys.executable, "-m", "reranker_serve"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    # The cause is said once, where it happened; the last line says what became of the server.
    cause = [line for line in lines if str(folder) in line and "failed to load" in line]
    assert len(cause) == 1 and "ERROR" in cause[0]
    assert lines[-1] == "reranker-serve: stopped because a model failed to load (the error above says why)"


def test_overload_answers_429_in_the_dialect_shape(tiny_model):
    model = FakeModel(delay=0.2)
    srv = fake_server(tiny_model, model, max_documents=4, max_queue=6, batch_size=2)
    try:
        body = {"query": "q", "documents": ["1 2", "3 4", "5 6", "7 8"]}
        with ThreadPoolExecutor(6) as pool:
            replies = list(pool.map(lambda _: srv.client.post("/v1/rerank", json=body), range(6)))
        codes = sorted(r.status_code for r in replies)
        assert codes.count(200) >= 1 and codes.count(429) >= 1 and set(codes) <= {200, 429}
        for r in replies:
            if r.status_code == 429:
                assert "busy" in r.json()["message"] and int(r.headers["retry-after"]) >= 1
        assert srv.client.post("/v1/rerank", json=body).status_code == 200  # and it recovers
    finally:
        srv.stop()


def test_deadline_answers_504(tiny_model):
    model = FakeModel()
    srv = fake_server(tiny_model, model, request_timeout=0.2)
    try:
        model.gate.clear()
        r = srv.client.post("/api/v1/rerank", json={"query": "q", "documents": ["1 2"]})
        assert r.status_code == 504 and "RERANKER_REQUEST_TIMEOUT" in r.json()["detail"]
    finally:
        model.gate.set()
        srv.stop()


def test_client_that_hangs_up_has_its_pairs_dropped(tiny_model):
    model = FakeModel()
    srv = fake_server(tiny_model, model)
    try:
        model.gate.clear()
        first = threading.Thread(target=lambda: srv.client.post("/rerank", json={"query": "q", "documents": ["1"]}))
        first.start()  # occupies the worker
        assert model.entered.wait(10)
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{srv.url}/rerank", json={"query": "q", "documents": ["55 55", "56 56"]}, timeout=0.3)
        time.sleep(1.0)  # the server notices the disconnect (generous: CI machines are busy)
        model.gate.set()
        first.join(10)
        assert srv.client.post("/rerank", json={"query": "q", "documents": ["9"]}).status_code == 200
        assert (55, 55) not in model.scored_ids() and (56, 56) not in model.scored_ids()
    finally:
        model.gate.set()
        srv.stop()


def test_failed_forward_is_503_and_the_server_recovers(tiny_model):
    model = FakeModel(fail_on=666)
    srv = fake_server(tiny_model, model)
    try:
        bad = srv.client.post("/rerank", json={"query": "q", "texts": ["666 1"]})
        assert bad.status_code == 503
        assert bad.json() == {"error": "inference failed (RuntimeError: simulated kernel failure); retry later",
                              "error_type": "Backend"}
        good = srv.client.post("/rerank", json={"query": "q", "texts": ["1 2", "5"]})
        assert good.status_code == 200 and [x["index"] for x in good.json()] == [1, 0]
    finally:
        srv.stop()


def test_wrong_content_type_is_explained(client):
    r = client.post("/v2/rerank", content=b'{"query":"q","documents":["a"]}',
                    headers={"content-type": "application/x-www-form-urlencoded"})
    assert r.status_code == 400 and "Content-Type: application/json" in r.json()["message"]


def test_openapi_documents_every_route_and_error_shape(client):
    spec = client.get("/openapi.json").json()
    for path, error_field in [("/rerank", "error"), ("/v1/rerank", "message"), ("/v2/rerank", "message"),
                              ("/api/v1/rerank", "detail")]:
        op = spec["paths"][path]["post"]
        assert "200" in op["responses"] and "401" in op["responses"] and "503" in op["responses"]
        ref = op["responses"]["503"]["content"]["application/json"]["schema"]["$ref"].split("/")[-1]
        assert error_field in spec["components"]["schemas"][ref]["properties"]
    for path in ("/health", "/ready", "/info"):
        assert path in spec["paths"]
    assert client.get("/docs").status_code == 200


def test_body_larger_than_the_limit_is_413_before_parsing(serve):
    srv = serve(max_request_bytes=4096)
    big = {"query": QUERY, "documents": ["word " * 1000]}
    r = srv.client.post("/rerank", json=big)
    assert r.status_code == 413 and "RERANKER_MAX_REQUEST_BYTES" in r.json()["error"]

    def chunks():  # no Content-Length: the limit holds while streaming too
        yield b'{"query": "q", "documents": ["'
        for _ in range(100):
            yield b"x" * 100
        yield b'"]}'

    r = srv.client.post("/v2/rerank", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 400 and "larger than 4096 bytes" in r.json()["message"]
    assert srv.client.post("/rerank", json={"query": QUERY, "documents": DOCS}).status_code == 200


def test_huge_documents_are_cut_before_tokenizing(client, reference):
    doc = "Paris is the capital of France. " * 20_000  # 640 kB of text
    r = client.post("/rerank", json={"query": QUERY, "documents": [doc], "raw_scores": True})
    assert r.status_code == 200
    assert r.json()["results"][0]["relevance_score"] == pytest.approx(reference.logits(QUERY, [doc[:8000]])[0], abs=1e-5)


def test_cors_is_off_unless_configured(client, serve):
    preflight = {"Origin": "http://app.example", "Access-Control-Request-Method": "POST"}
    assert "access-control-allow-origin" not in client.options("/rerank", headers=preflight).headers
    srv = serve(cors_origins=["http://app.example"])
    r = srv.client.options("/rerank", headers=preflight)
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "http://app.example"
    other = srv.client.options("/rerank", headers={**preflight, "Origin": "http://evil.example"})
    assert "access-control-allow-origin" not in other.headers


def test_cors_allows_every_header_the_api_reads(serve):
    srv = serve(cors_origins=["http://app.example"])
    wanted = "authorization, content-type, x-priority, cache-control"
    r = srv.client.options("/rerank", headers={"Origin": "http://app.example", "Access-Control-Request-Method": "POST",
                                               "Access-Control-Request-Headers": wanted})
    assert r.status_code == 200, r.text
    allowed = {h.strip().lower() for h in r.headers["access-control-allow-headers"].split(",")}
    assert {"authorization", "content-type", "x-priority", "cache-control"} <= allowed
