"""What runs the forward pass: OpenVINO for cross-encoders on the CPU (auto), torch otherwise."""

from __future__ import annotations

import pytest
import torch

from conftest import DOCS, QUERY, RunningServer, settings_for
from reranker_serve.app import create_app
from reranker_serve.config import Settings
from reranker_serve.device import Placement
from reranker_serve.errors import ModelLoadError
from reranker_serve.models import EncodeOptions, load_model
from reranker_serve.models import encoder as ov_policy  # use_openvino: the OpenVINO fallback policy


def spec(folder, **options):
    return Settings(_env_file=None, model_path=folder, max_length=128, **options).model_specs[0]


@pytest.mark.parametrize("backend", ["torch", "openvino"])
def test_each_backend_matches_the_reference_on_padded_batches(tiny_model, reference, backend):
    model = load_model(spec(tiny_model, backend=backend), Placement("cpu", torch.float32))
    assert model.backend == backend
    docs = DOCS + ["Paris is the capital and most populous city of France. " * 8]
    pairs = model.encode(QUERY, docs, EncodeOptions(max_length=128))
    expected = reference.logits(QUERY, docs)
    assert model.forward(pairs) == pytest.approx(expected, abs=1e-5)  # one padded batch


def test_auto_picks_openvino_for_cross_encoders_on_the_cpu_and_torch_for_the_rest(tiny_model):
    assert load_model(spec(tiny_model), Placement("cpu", torch.float32)).backend == "openvino"


def test_openvino_in_bf16_stays_close_to_float32(tiny_model, reference):
    model = load_model(spec(tiny_model, backend="openvino"), Placement("cpu", torch.bfloat16))
    assert model.dtype_name == "bfloat16"
    got = model.forward(model.encode(QUERY, DOCS, EncodeOptions(max_length=128)))
    assert got == pytest.approx(reference.logits(QUERY, DOCS), abs=0.1)


def test_auto_falls_back_to_torch_when_conversion_fails(tiny_model, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("unsupported operation aten::frobnicate")

    monkeypatch.setattr(ov_policy, "to_openvino", broken)
    model = load_model(spec(tiny_model), Placement("cpu", torch.bfloat16))
    assert (model.backend, model.dtype_name) == ("torch", "bfloat16")
    with pytest.raises(ModelLoadError, match="aten::frobnicate"):
        load_model(spec(tiny_model, backend="openvino"), Placement("cpu", torch.float32))


def test_openvino_refuses_what_it_does_not_run(tiny_model):
    with pytest.raises(ModelLoadError, match="RERANKER_BACKEND=openvino runs cross-encoders"):
        load_model(spec(tiny_model, backend="openvino"), Placement("cuda", torch.float16))


def test_info_names_the_backend_of_each_model(tiny_model):
    models = f'["openvino={tiny_model}", {{"model": "{tiny_model}", "name": "torch", "backend": "torch"}}]'
    srv = RunningServer(create_app(settings_for(tiny_model, models=models)))
    try:
        info = srv.client.get("/info").json()
        assert [(m["name"], m["backend"]) for m in info["models"]] == [("openvino", "openvino"), ("torch", "torch")]
        # Two models share the cores: one whole forward pass at a time, OpenVINO's too.
        assert [m["batches_in_flight"] for m in info["models"]] == [1, 1]
        a = srv.client.post("/rerank", json={"model": "openvino", "query": QUERY, "documents": DOCS}).json()
        b = srv.client.post("/rerank", json={"model": "torch", "query": QUERY, "documents": DOCS}).json()
        assert [x["index"] for x in a["results"]] == [x["index"] for x in b["results"]]
        for x, y in zip(a["results"], b["results"]):
            assert x["relevance_score"] == pytest.approx(y["relevance_score"], abs=1e-5)
    finally:
        srv.stop()


def test_openvino_keeps_two_batches_in_flight_and_each_gets_its_own_scores(tiny_model):
    model = load_model(spec(tiny_model, backend="openvino"), Placement("cpu", torch.float32))
    runner = model.runner
    assert runner.asynchronous and model.asynchronous
    options = EncodeOptions(max_length=128)
    batches = [model.encode(QUERY, DOCS[i : i + 2 + i], options) for i in range(3)]  # 2, 3 and 3 pairs
    expected = [runner.logits(batch) for batch in batches]
    # Started back to back: the third batch reuses the first one's infer request before anyone
    # collected the first; its scores must have been kept, and nothing mixed up between batches.
    waits = [runner.start(batch) for batch in batches]
    for wait, want in zip(reversed(waits), reversed(expected)):
        assert torch.equal(wait(), want)
    # Through the reranker's launch (what the batcher calls): pending scores, collected later.
    pending = [model.launch(batch) for batch in batches]
    assert [p.result() for p in pending] == [model.forward(batch) for batch in batches]


def test_alone_on_the_cpu_openvino_keeps_the_next_batch_queued_and_scores_stay_exact(tiny_model, reference):
    srv = RunningServer(create_app(settings_for(tiny_model, backend="openvino", dtype="float32")))
    try:
        assert srv.client.get("/info").json()["models"][0]["batches_in_flight"] == 2
        docs = [f"{d} ({i})" for i in range(6) for d in DOCS]  # 30 documents: several batches in flight
        expected = reference.logits(QUERY, docs)
        replies = []

        def ask() -> None:
            replies.append(srv.client.post("/rerank", json={"query": QUERY, "documents": docs, "raw_scores": True}))

        import threading

        threads = [threading.Thread(target=ask) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for reply in replies:
            assert reply.status_code == 200
            got = {r["index"]: r["relevance_score"] for r in reply.json()["results"]}
            assert [got[i] for i in range(len(docs))] == pytest.approx(expected, abs=1e-5)
    finally:
        srv.stop()
