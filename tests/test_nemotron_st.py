"""llama-nemotron-rerank-1b-v2 (bidirectional Llama) and modular sentence-transformers CrossEncoders
(ettin-reranker), each a tiny checkpoint in its published layout (tests/nemotron_st_models.py),
served over HTTP on torch and on OpenVINO, every score in every dialect within 1e-4 of the
published reference computed in float32 one pair at a time.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from conftest import RunningServer, load_error, settings_for
from nemotron_st_models import build_modular, build_nemotron
from reranker_serve.app import create_app
from reranker_serve.models import detect_family

QUERY = "What is the capital of France?"
SENTENCE = "Paris is the capital and most populous city of France, on the river Seine. "
# A couple of tokens to a few hundred (past ModernBERT's 16-token window here many times over).
DOCS = ["Paris.", "Berlin is the capital of Germany.", SENTENCE, SENTENCE * 4, "The cat sat on the mat.",
        SENTENCE * 12, "Deep learning uses neural networks. " * 7]
BACKENDS = ("torch", "openvino")
MAX_LENGTH = 1024


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("nemotron-st")
    return {
        "nemotron": build_nemotron(base / "llama-nemotron-rerank-1b-v2"),
        "nemotron-last": build_nemotron(base / "nemotron-last", seed=1, pooling="last", temperature=0.5),
        "ettin": build_modular(base / "ettin-reranker-17m-v1"),
        "modular-prompted": build_modular(base / "modular-prompted", seed=1, pooling="mean", activation="Sigmoid",
                                          prompt="query: "),
    }


@pytest.fixture(scope="module")
def server(folders):
    entries = [{"model": str(folders[name]), "name": f"{name}@{backend}", "backend": backend, "max_length": MAX_LENGTH}
               for name in folders for backend in BACKENDS]
    srv = RunningServer(create_app(settings_for(folders["ettin"], models=json.dumps(entries), warmup_seconds=0)))
    yield srv
    srv.stop()


# -- the published references -----------------------------------------------------------------------
def nemotron_reference(folder: Path, docs: list[str]) -> list[float]:
    """The published forward, transcribed: nvidia/llama-nemotron-rerank-1b-v2 on the hub,
    llama_bidirectional_model.py (revision of 2025-10, LlamaBidirectionalForSequenceClassification):

        LlamaBidirectionalModel: LlamaModel, every layer's self_attn.is_causal = False, its mask
            _prepare_4d_attention_mask(attention_mask, dtype) (padding only, no causal part)
        pool(last_hidden_states, attention_mask, config.pooling)  ("avg": sum / count; "last": the
            last real token)
        pooled_logits = self.score(pooled) / self.config.temperature

    and the model card's input: tokenizer(f"question:{query} \\n \\n passage:{passage}",
    truncation=True, max_length=...) (vLLM: examples/pooling/score/template/nemotron-rerank.jinja).
    The 4D mask is built here by hand (all zeros: one pair, nothing padded) with eager attention,
    independently of the server's path (config.is_causal=False under SDPA). Score: sigmoid(logit).
    """
    from transformers import AutoTokenizer, LlamaConfig, LlamaModel
    from safetensors.torch import load_file

    raw = json.loads((folder / "config.json").read_text())
    config = LlamaConfig(**{k: v for k, v in raw.items() if k not in ("pooling", "temperature", "auto_map",
                                                                        "model_type", "architectures")})
    config._attn_implementation = "eager"
    model = LlamaModel(config).eval()
    weights = load_file(folder / "model.safetensors")
    model.load_state_dict({k.removeprefix("model."): v for k, v in weights.items() if k.startswith("model.")})
    for layer in model.layers:
        layer.self_attn.is_causal = False
    score = weights["score.weight"]
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
    out = []
    with torch.inference_mode():
        for doc in docs:
            enc = tokenizer(f"question:{QUERY} \n \n passage:{doc}", truncation=True, max_length=MAX_LENGTH,
                            return_tensors="pt")
            ids, mask = enc["input_ids"], enc["attention_mask"]
            mask4d = torch.zeros((1, 1, ids.shape[1], ids.shape[1]))  # _prepare_4d_attention_mask of all ones
            hidden = model(input_ids=ids, attention_mask=mask4d, use_cache=False).last_hidden_state
            hidden = hidden.masked_fill(~mask[..., None].bool(), 0.0)
            if raw["pooling"] == "avg":
                pooled = hidden.sum(dim=1) / mask.sum(dim=1)[..., None]
            else:
                assert raw["pooling"] == "last"
                pooled = hidden[:, -1]
            logit = float((pooled @ score.T)[0, 0]) / raw["temperature"]
            out.append(sigmoid(logit))
    return out


def modular_reference(folder: Path, docs: list[str]) -> list[float]:
    """sentence-transformers' CrossEncoder(folder).predict itself (installed 6.3), fp32, one pair at a time."""
    from sentence_transformers import CrossEncoder

    model = CrossEncoder(str(folder), device="cpu")
    return [float(model.predict([(QUERY, doc)], show_progress_bar=False)[0]) for doc in docs]


def reference(folders: dict[str, Path], name: str, docs: list[str]) -> list[float]:
    folder = folders[name]
    return nemotron_reference(folder, docs) if name.startswith("nemotron") else modular_reference(folder, docs)


# -- the dialects ---------------------------------------------------------------------------------------
def by_index(results: list[dict], key: str = "relevance_score") -> list[float]:
    got = {r["index"]: r[key] for r in results}
    return [got[i] for i in range(len(got))]


def dialect_scores(srv: RunningServer, model: str, docs: list[str]) -> dict[str, list[float]]:
    out = {}
    r = srv.client.post("/rerank", json={"model": model, "query": QUERY, "documents": docs})
    assert r.status_code == 200, r.text
    out["native"] = by_index(r.json()["results"])
    r = srv.client.post("/v1/rerank", json={"model": model, "query": QUERY, "documents": docs})
    assert r.status_code == 200, r.text
    out["cohere-v1"] = by_index(r.json()["results"])
    r = srv.client.post("/v2/rerank", json={"model": model, "query": QUERY, "documents": docs})
    assert r.status_code == 200, r.text
    out["cohere-v2"] = by_index(r.json()["results"])
    r = srv.client.post("/api/v1/rerank", json={"model": model, "query": QUERY, "documents": docs})
    assert r.status_code == 200, r.text
    out["jina"] = by_index(r.json()["results"])
    assert r.json()["usage"]["total_tokens"] > 0
    r = srv.client.post("/rerank", json={"model": model, "query": QUERY, "texts": docs})
    assert r.status_code == 200, r.text
    out["tei"] = by_index(r.json(), "score")
    return out


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["nemotron", "nemotron-last", "ettin", "modular-prompted"])
def test_each_family_scores_like_its_published_code_in_every_dialect(server, folders, name, backend):
    expected = reference(folders, name, DOCS)
    for dialect, got in dialect_scores(server, f"{name}@{backend}", DOCS).items():
        assert got == pytest.approx(expected, abs=1e-4), dialect
    info = {m["name"]: m for m in server.client.get("/info").json()["models"]}[f"{name}@{backend}"]
    assert info["family"] == ("nemotron-rerank" if name.startswith("nemotron") else "st-crossencoder")
    assert info["backend"] == backend, info.get("backend_note")  # each passed its start-up check


def test_the_published_remote_code_never_runs(folders):
    # Its llama_bidirectional_model.py raises on import (tests/nemotron_st_models.py): served above
    # without RERANKER_TRUST_REMOTE_CODE, so nothing imported it. The family is native.
    assert "raise ImportError" in (folders["nemotron"] / "llama_bidirectional_model.py").read_text()
    family = detect_family(json.loads((folders["nemotron"] / "config.json").read_text()))
    assert family.name == "nemotron-rerank" and family.native and not family.remote_code


def test_nemotron_raw_scores_are_the_published_logits_and_tokens_are_counted(server, folders):
    expected = [math.log(p / (1 - p)) for p in reference(folders, "nemotron", DOCS[:3])]
    r = server.client.post("/rerank", json={"model": "nemotron@torch", "query": QUERY, "texts": DOCS[:3],
                                            "raw_scores": True})
    assert r.status_code == 200, r.text
    assert by_index(r.json(), "score") == pytest.approx(expected, abs=1e-4)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folders["nemotron"], trust_remote_code=False)
    tokens = sum(len(tokenizer(f"question:{QUERY} \n \n passage:{d}")["input_ids"]) for d in DOCS[:3])
    r = server.client.post("/api/v1/rerank", json={"model": "nemotron@torch", "query": QUERY, "documents": DOCS[:3]})
    assert r.json()["usage"]["total_tokens"] == tokens  # the whole prompt, BOS included


def test_the_modular_activation_is_the_checkpoints_own(server, folders):
    # ettin's activation_fn is Identity: predict returns the raw score, not a sigmoid of it.
    config = json.loads((folders["ettin"] / "config_sentence_transformers.json").read_text())
    assert config["activation_fn"] == "torch.nn.modules.linear.Identity"
    got = by_index(server.client.post("/rerank", json={"model": "ettin@torch", "query": QUERY,
                                                       "documents": DOCS}).json()["results"])
    assert any(s < 0 or s > 1 for s in got)  # not squashed
    prompted = json.loads((folders["modular-prompted"] / "config_sentence_transformers.json").read_text())
    assert prompted["default_prompt_name"] == "query" and prompted["prompts"]["query"] == "query: "


# -- detection and refusals ---------------------------------------------------------------------------
def test_families_are_detected_from_config_json():
    assert detect_family({"architectures": ["LlamaBidirectionalForSequenceClassification"],
                          "model_type": "llama_bidirec"}).name == "nemotron-rerank"
    assert detect_family({"architectures": ["ModernBertModel"], "model_type": "modernbert"}).name == "st-crossencoder"
    assert detect_family({"architectures": ["ModernBertForSequenceClassification"],
                          "model_type": "modernbert"}).name == "encoder"


def _copy(folder: Path, to: Path) -> Path:
    shutil.copytree(folder, to)
    return to


def test_a_malformed_nemotron_checkpoint_is_refused_naming_the_family(folders, tmp_path):
    from safetensors.torch import load_file, save_file

    broken = _copy(folders["nemotron"], tmp_path / "no-score")
    weights = load_file(broken / "model.safetensors")
    del weights["score.weight"]
    save_file(weights, broken / "model.safetensors", metadata={"format": "pt"})
    error = load_error(settings_for(broken, warmup_seconds=0))
    assert "nemotron-rerank" in error and "score" in error

    pooled = _copy(folders["nemotron"], tmp_path / "bad-pooling")
    config = json.loads((pooled / "config.json").read_text())
    config["pooling"] = "max"
    (pooled / "config.json").write_text(json.dumps(config))
    error = load_error(settings_for(pooled, warmup_seconds=0))
    assert "nemotron-rerank" in error and "pooling 'max'" in error


def test_a_bare_encoder_without_the_cross_encoder_modules_is_refused_naming_the_family(folders, tmp_path):
    # Without modules.json sentence-transformers would bolt a random head on the bare encoder.
    bare = _copy(folders["ettin"], tmp_path / "bare")
    (bare / "modules.json").unlink()
    error = load_error(settings_for(bare, warmup_seconds=0))
    assert "st-crossencoder" in error and "modules.json" in error

    embedder = _copy(folders["ettin"], tmp_path / "embedder")
    config = json.loads((embedder / "config_sentence_transformers.json").read_text())
    config["model_type"] = "SentenceTransformer"
    (embedder / "config_sentence_transformers.json").write_text(json.dumps(config))
    error = load_error(settings_for(embedder, warmup_seconds=0))
    assert "st-crossencoder" in error and "not a CrossEncoder" in error


def test_nemotron_falls_back_to_torch_with_a_reason_when_openvino_cannot_convert_it(folders, monkeypatch):
    from reranker_serve.config import Settings
    from reranker_serve.device import Placement
    from reranker_serve.models import encoder, load_model

    def broken(*args, **kwargs):
        raise RuntimeError("conversion failed here")

    monkeypatch.setattr(encoder, "to_openvino", broken)
    srv = RunningServer(create_app(settings_for(folders["nemotron"], warmup_seconds=0, max_length=MAX_LENGTH,
                                                backend="auto")))
    try:
        info = srv.client.get("/info").json()["models"][0]
        assert info["backend"] == "torch" and "could not convert" in info["backend_note"]
        got = by_index(srv.client.post("/rerank", json={"query": QUERY, "documents": DOCS}).json()["results"])
        assert got == pytest.approx(reference(folders, "nemotron", DOCS), abs=1e-4)
    finally:
        srv.stop()
    spec = Settings(_env_file=None, model_path=folders["nemotron"], backend="openvino").model_specs[0]
    with pytest.raises(Exception, match="conversion failed here"):
        load_model(spec, Placement("cpu", torch.float32))
