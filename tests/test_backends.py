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
from reranker_serve.models import openvino as ov_backend


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

    monkeypatch.setattr(ov_backend, "to_openvino", broken)
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
        a = srv.client.post("/rerank", json={"model": "openvino", "query": QUERY, "documents": DOCS}).json()
        b = srv.client.post("/rerank", json={"model": "torch", "query": QUERY, "documents": DOCS}).json()
        assert [x["index"] for x in a["results"]] == [x["index"] for x in b["results"]]
        for x, y in zip(a["results"], b["results"]):
            assert x["relevance_score"] == pytest.approx(y["relevance_score"], abs=1e-5)
    finally:
        srv.stop()
