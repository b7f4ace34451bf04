"""Several models per server: selection by `model` in every dialect, aliases, /v1/models, limits."""

from __future__ import annotations

import json
import threading
import time

import pytest

from conftest import DOCS, QUERY, RunningServer, settings_for
from reranker_serve.api.cohere import CohereErrorResponse
from reranker_serve.api.jina import JinaErrorResponse
from reranker_serve.api.native import TEIErrorResponse
from reranker_serve.api.system import Info, ModelList
from reranker_serve.app import create_app
from reranker_serve.config import ConfigError, load_settings
from reranker_serve.engine import Engine

LONG = "Paris is the capital of France. " * 10


@pytest.fixture(scope="module")
def two(tiny_model):
    """The tiny model as "full" (+ aliases, one engine) and again as "short" with its own limits."""
    models = json.dumps([
        f"full={tiny_model}",
        {"model": str(tiny_model), "name": ["rerank-v3.5", "jina-reranker-v2-base-multilingual"]},
        {"model": str(tiny_model), "name": "short", "max_length": 32, "max_queue": 1000, "batch_size": 4},
    ])
    srv = RunningServer(create_app(settings_for(tiny_model, models=models)))
    yield srv
    srv.stop()


def scores(reply: dict | list) -> dict[int, float]:
    items = reply if isinstance(reply, list) else reply["results"]
    return {x["index"]: x.get("relevance_score", x.get("score")) for x in items}


BODIES = {
    "native": ("/rerank", lambda m: {"model": m, "query": QUERY, "documents": [LONG, *DOCS]}),
    "tei": ("/rerank", lambda m: {"model": m, "query": QUERY, "texts": [LONG, *DOCS]}),
    "cohere-v1": ("/v1/rerank", lambda m: {"model": m, "query": QUERY, "documents": [LONG, *DOCS]}),
    "cohere-v2": ("/v2/rerank", lambda m: {"model": m, "query": QUERY, "documents": [LONG, *DOCS]}),
    "jina": ("/api/v1/rerank", lambda m: {"model": m, "query": QUERY, "documents": [LONG, *DOCS]}),
}


@pytest.mark.parametrize("dialect", sorted(BODIES))
def test_model_field_selects_the_model_in_every_dialect(two, reference, dialect):
    path, body = BODIES[dialect]
    full = scores(two.client.post(path, json=body("full")).json())
    short = scores(two.client.post(path, json=body("short")).json())
    assert full[0] == pytest.approx(reference.scores(QUERY, [LONG])[0], abs=1e-5)
    assert short[0] == pytest.approx(reference.scores(QUERY, [LONG], max_length=32)[0], abs=1e-5)
    assert abs(full[0] - short[0]) > 1e-4  # "short" cuts the long document to fit 32 tokens
    default = body(None)
    del default["model"]
    assert scores(two.client.post(path, json=default).json()) == full  # no model: the first one
    alias = scores(two.client.post(path, json=body("jina-reranker-v2-base-multilingual")).json())
    assert alias == full


@pytest.mark.parametrize("dialect,status,shape,field", [
    ("native", 404, TEIErrorResponse, "error"),
    ("tei", 404, TEIErrorResponse, "error"),
    ("cohere-v1", 404, CohereErrorResponse, "message"),
    ("cohere-v2", 404, CohereErrorResponse, "message"),
    ("jina", 404, JinaErrorResponse, "detail"),
])
def test_unknown_model_is_refused_in_the_dialect_shape_listing_the_served_ones(two, dialect, status, shape, field):
    path, body = BODIES[dialect]
    r = two.client.post(path, json=body("gpt-4"))
    assert r.status_code == status
    message = getattr(shape.model_validate(r.json()), field)
    assert "'gpt-4' is not served" in message
    for name in ("full", "rerank-v3.5", "jina-reranker-v2-base-multilingual", "short"):
        assert repr(name) in message


def test_replies_name_the_model_that_answered(two):
    r = two.client.post("/rerank", json={"model": "rerank-v3.5", "query": QUERY, "documents": DOCS})
    assert r.json()["model"] == "full"
    r = two.client.post("/api/v1/rerank", json={"model": "short", "query": QUERY, "documents": DOCS})
    assert r.json()["model"] == "short"


def test_v1_models_lists_every_name(two, tiny_model):
    listing = ModelList.model_validate(two.client.get("/v1/models").json())
    assert [m.id for m in listing.data] == ["full", "rerank-v3.5", "jina-reranker-v2-base-multilingual", "short"]
    assert all(m.root == str(tiny_model) and m.ready and m.family == "encoder" for m in listing.data)
    assert listing.object == "list" and all(m.object == "model" for m in listing.data)


def test_aliases_share_one_engine_and_each_model_has_its_own_limits(two):
    info = Info.model_validate(two.client.get("/info").json())
    assert [(m.name, m.aliases) for m in info.models] == [
        ("full", ["rerank-v3.5", "jina-reranker-v2-base-multilingual"]), ("short", [])]
    full, short = info.models
    assert (full.max_length, full.batch_size, full.max_queue) == (128, 32, 4096)
    assert (short.max_length, short.batch_size, short.max_queue) == (32, 4, 1000)
    assert info.model == "full" and info.ready


def test_unknown_model_can_fall_back_to_the_default(serve, reference):
    srv = serve(unknown_model="default")
    r = srv.client.post("/v2/rerank", json={"model": "rerank-english-v2.0", "query": QUERY, "documents": DOCS})
    assert r.status_code == 200
    expected = reference.scores(QUERY, DOCS)
    for x in r.json()["results"]:
        assert x["relevance_score"] == pytest.approx(expected[x["index"]], abs=1e-5)


def test_a_model_still_loading_does_not_hold_up_the_others(tiny_model, monkeypatch):
    release = threading.Event()
    real_load = Engine.load

    def load(settings, spec=None, **kw):
        if spec is not None and spec.name == "second":
            release.wait(30)
        return real_load(settings, spec, **kw)

    monkeypatch.setattr(Engine, "load", staticmethod(load))
    models = json.dumps([f"first={tiny_model}", {"model": str(tiny_model), "name": "second", "max_length": 32}])
    srv = RunningServer(create_app(settings_for(tiny_model, models=models)), wait_ready=False)
    try:
        deadline = time.monotonic() + 60
        while not srv.client.get("/v1/models").json()["data"][0]["ready"]:
            assert time.monotonic() < deadline, "the first model never became ready"
            time.sleep(0.05)
        assert srv.client.get("/ready").status_code == 503  # not every model is ready yet
        ok = srv.client.post("/rerank", json={"model": "first", "query": QUERY, "documents": DOCS})
        assert ok.status_code == 200
        busy = srv.client.post("/v1/rerank", json={"model": "second", "query": QUERY, "documents": DOCS})
        assert busy.status_code == 503 and "'second' is still loading" in busy.json()["message"]
        assert busy.headers["retry-after"] == "5"
        release.set()
        srv.wait_ready()
        assert srv.client.post("/v1/rerank", json={"model": "second", "query": QUERY, "documents": DOCS}).status_code == 200
    finally:
        release.set()
        srv.stop()


@pytest.mark.parametrize("value,needle", [
    ("a=BAAI/x,a=BAAI/y", "the name 'a' is given to two different models"),
    ('[{"model": "BAAI/x", "max_lenght": 5}]', "RERANKER_MODELS[0].max_lenght: Extra inputs are not permitted"),
    ('[{"model": "BAAI/x", "model_type": "gpt"}]', "RERANKER_MODELS[0].model_type: Input should be"),
    ("[not json", "RERANKER_MODELS: starts with '[' but is not a JSON list"),
    ("./nowhere/model", "RERANKER_MODELS[0].model: folder 'nowhere/model' does not exist (got './nowhere/model')"),
    ('[{"model": "BAAI/x", "max_queue": 10}]', "max_queue of 'BAAI/x' (10) must be at least RERANKER_MAX_DOCUMENTS"),
])
def test_bad_model_lists_stop_start_up_with_one_line(value, needle, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as info:
        load_settings(_env_file=None, models=value)
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_model_list_syntax(tmp_path, tiny_model):
    specs = load_settings(_env_file=None, models=f"rerank-v3.5=BAAI/bge-reranker-v2-m3 {tiny_model}\n"
                                                 "rerank-english-v3.0=BAAI/bge-reranker-v2-m3").model_specs
    assert [(s.names, s.source, s.local) for s in specs] == [
        (("rerank-v3.5", "rerank-english-v3.0"), "BAAI/bge-reranker-v2-m3", False),
        (("tiny-reranker",), str(tiny_model), True),
    ]
