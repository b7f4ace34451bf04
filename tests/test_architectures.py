"""Every cross-encoder architecture on every CPU backend it may get, and mxbai-rerank-v2, against
transformers in float32 one pair at a time.

One real server serves each tiny model (tests/architectures.py) on torch and on OpenVINO; one
request holds documents from a few tokens to many times a local-attention window, so the batch
pads short pairs by more than half a window (what made ModernBERT's OpenVINO graph return NaN).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from architectures import (
    build_bert, build_deberta_v3, build_gte, build_modernbert, build_qwen2_lm, build_xlmr_long,
)
from conftest import RunningServer, load_error, settings_for
from reranker_serve.app import create_app
from reranker_serve.errors import ModelLoadError
from reranker_serve.models import detect_family

QUERY = "What is the capital of France?"
SENTENCE = "Paris is the capital and most populous city of France, on the river Seine. "
# From a couple of tokens to a few hundred: past ModernBERT's window (16 here) many times over.
DOCS = ["Paris.", "Berlin is the capital of Germany.", SENTENCE, SENTENCE * 4, "The cat sat on the mat.",
        SENTENCE * 12, "Deep learning uses neural networks. " * 7]
LONG_DOCS = DOCS + [SENTENCE * 60]  # past 1,024 tokens: the long-context XLM-R's

ENCODERS = {
    "bert": lambda out: build_bert(out),
    "electra": lambda out: build_bert(out, electra=True, seed=1),
    "bert-2": lambda out: build_bert(out, labels=2, seed=2),
    "xlmr-long": build_xlmr_long,
    "modernbert-mean": lambda out: build_modernbert(out, pooling="mean"),
    "modernbert-cls": lambda out: build_modernbert(out, pooling="cls", seed=1),
    "deberta-v3": build_deberta_v3,
    "gte": build_gte,
}
MAX_LENGTH = {"xlmr-long": 4096}
BACKENDS = ("torch", "openvino")


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("architectures")
    built = {name: build(base / name) for name, build in ENCODERS.items()}
    built["mxbai"] = build_qwen2_lm(base / "mxbai-rerank-base-v2")
    return built


@pytest.fixture(scope="module")
def server(folders):
    entries = [{"model": str(folders[name]), "name": f"{name}@{backend}", "backend": backend,
                "max_length": MAX_LENGTH.get(name, 512)} for name in ENCODERS for backend in BACKENDS]
    entries.append({"model": str(folders["mxbai"]), "name": "mxbai", "max_length": 1024})
    srv = RunningServer(create_app(settings_for(folders["bert"], models=json.dumps(entries), warmup_seconds=0)))
    yield srv
    srv.stop()


def encoder_reference(folder: Path, docs: list[str], *, max_length: int) -> list[float]:
    """transformers, float32, the tokenizer's own pair encoding, one pair at a time; one label:
    sigmoid(logit), two labels: softmax(logits)[1]."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder, dtype=torch.float32).eval()
    out = []
    with torch.inference_mode():
        for doc in docs:
            enc = tokenizer(QUERY, doc, truncation="only_second", max_length=max_length, return_tensors="pt")
            logits = model(**enc).logits[0]
            out.append(sigmoid(float(logits[0])) if logits.numel() == 1 else float(logits.softmax(-1)[1]))
    return out


def scores(srv: RunningServer, model: str, docs: list[str], **extra) -> list[float]:
    reply = srv.client.post("/rerank", json={"model": model, "query": QUERY, "documents": docs, **extra})
    assert reply.status_code == 200, reply.text
    got = {r["index"]: r["relevance_score"] for r in reply.json()["results"]}
    return [got[i] for i in range(len(docs))]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(ENCODERS))
def test_each_encoder_architecture_scores_like_transformers_on_each_backend(server, folders, name, backend):
    docs = LONG_DOCS if name == "xlmr-long" else DOCS
    expected = encoder_reference(folders[name], docs, max_length=MAX_LENGTH.get(name, 512))
    assert scores(server, f"{name}@{backend}", docs) == pytest.approx(expected, abs=1e-4)
    info = {m["name"]: m for m in server.client.get("/info").json()["models"]}[f"{name}@{backend}"]
    assert info["backend"] == backend, info.get("backend_note")  # each passed its start-up check


def test_the_long_context_model_reads_past_a_thousand_tokens(server, folders):
    from transformers import AutoTokenizer

    tokens = len(AutoTokenizer.from_pretrained(folders["xlmr-long"])(QUERY, LONG_DOCS[-1])["input_ids"])
    assert 1024 < tokens < 4096  # so the score test above saw it whole, not truncated
    info = {m["name"]: m for m in server.client.get("/info").json()["models"]}
    assert info["xlmr-long@torch"]["max_length"] == 4096


# -- mxbai-rerank-v2 ---------------------------------------------------------------------------------
MXBAI_PREFIX = ("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
                "<|im_start|>user\n")
MXBAI_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n"
MXBAI_TASK = ("You are a search relevance expert who evaluates how well documents match search queries. For each "
              "query-document pair, carefully analyze the semantic relationship between them, then provide your "
              "binary relevance judgment (0 for not relevant, 1 for relevant).\nRelevance:")


def mxbai_reference(folder: Path, docs: list[str], instruction: str | None = None) -> list[float]:
    """mixedbread's MxbaiRerankV2 (mxbai_rerank_v2.py): each piece tokenized alone, concatenated as
    prefix + query + sep + doc + sep + task + suffix; logit("1") - logit("0") at the last token."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()

    def ids(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    yes, no, sep = ids("1")[0], ids("0")[0], ids("\n")
    query = f"query: {QUERY}" if instruction is None else f"instruction: {instruction}\nquery: {QUERY}"
    out = []
    with torch.inference_mode():
        for doc in docs:
            tokens = ids(MXBAI_PREFIX) + ids(query) + sep + ids(f"document: {doc}") + sep + ids(MXBAI_TASK) \
                + ids(MXBAI_SUFFIX)
            last = model(torch.tensor([tokens])).logits[0, -1]
            out.append(sigmoid(float(last[yes] - last[no])))
    return out


def test_mxbai_rerank_v2_is_detected_by_name_and_scores_as_mixedbread_does(server, folders):
    info = {m["name"]: m for m in server.client.get("/info").json()["models"]}["mxbai"]
    assert info["family"] == "mxbai-rerank-v2" and info["takes_instruction"]
    assert scores(server, "mxbai", DOCS) == pytest.approx(mxbai_reference(folders["mxbai"], DOCS), abs=1e-4)
    task = "Find passages about European capitals"
    assert scores(server, "mxbai", DOCS[:4], instruction=task) == pytest.approx(
        mxbai_reference(folders["mxbai"], DOCS[:4], instruction=task), abs=1e-4)


def test_a_causal_lm_that_is_no_known_reranker_is_refused_without_a_wrong_formula(folders, tmp_path):
    # The same Qwen2 weights in a folder that does not say mxbai: a Qwen2 chat model, as far as
    # anyone can tell. Reading it with another family's prompt would score silently wrong.
    plain = tmp_path / "qwen2-chat"
    plain.symlink_to(folders["mxbai"], target_is_directory=True)
    error = load_error(settings_for(plain))
    assert "not a known reranker" in error
    assert "RERANKER_MODEL_TYPE=llm" not in error and "RERANKER_MODEL_TYPE=qwen3" not in error
    assert "RERANKER_MODEL_TYPE=mxbai-rerank-v2" in error  # the one reranker published on Qwen2
    with pytest.raises(ModelLoadError) as caught:
        detect_family({"architectures": ["LlamaForCausalLM"], "model_type": "llama"})
    assert "RERANKER_MODEL_TYPE" not in str(caught.value)  # nothing was published on it: no advice to follow
    assert detect_family({"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2"},
                         "mxbai-rerank-v2").name == "mxbai-rerank-v2"


# -- the start-up check of a backend ------------------------------------------------------------------
def test_openvino_that_disagrees_with_torch_does_not_serve_and_info_says_why(folders, monkeypatch):
    from contextlib import nullcontext

    from reranker_serve.models import openvino as ov

    # The conversion as it was: padding rows that see no key come out NaN in OpenVINO.
    monkeypatch.setattr(ov, "_finite_padding_rows", lambda config: nullcontext())
    folder = folders["modernbert-mean"]
    srv = RunningServer(create_app(settings_for(folder, warmup_seconds=0, max_length=512)))
    try:
        info = srv.client.get("/info").json()["models"][0]
        assert info["backend"] == "torch"
        assert "OpenVINO" in info["backend_note"] and "non-finite" in info["backend_note"]
        assert scores(srv, info["name"], DOCS) == pytest.approx(encoder_reference(folder, DOCS, max_length=512),
                                                              abs=1e-4)
    finally:
        srv.stop()
    error = load_error(settings_for(folder, backend="openvino", warmup_seconds=0))
    assert "RERANKER_BACKEND=openvino" in error and "non-finite" in error and "RERANKER_BACKEND=torch" in error


def test_the_openvino_conversion_itself_keeps_padded_local_attention_finite(folders):
    from reranker_serve.config import Settings
    from reranker_serve.device import Placement
    from reranker_serve.models import EncodeOptions, load_model

    spec = Settings(_env_file=None, model_path=folders["modernbert-mean"], max_length=512,
                    backend="openvino").model_specs[0]
    model = load_model(spec, Placement("cpu", torch.float32))
    assert model.backend == "openvino" and "agreed with torch" in model.backend_note
    pairs = model.encode(QUERY, ["Paris.", SENTENCE * 12], EncodeOptions(max_length=512))
    assert len(pairs[1]) - len(pairs[0]) > 8 * 16  # padded by many windows
    raw = model.forward(pairs)
    assert all(math.isfinite(x) for x in raw)


def test_deberta_v3_loads_with_eager_attention_and_the_setting_overrides(folders):
    from reranker_serve.config import Settings
    from reranker_serve.device import Placement
    from reranker_serve.models import load_model

    def load(**options):
        spec = Settings(_env_file=None, model_path=folders["deberta-v3"], max_length=512, backend="torch",
                        **options).model_specs[0]
        return load_model(spec, Placement("cpu", torch.float32))

    assert load().attn_implementation == "eager"
    assert load(attn_implementation="eager").attn_implementation == "eager"
    with pytest.raises(ModelLoadError, match="RERANKER_ATTN_IMPLEMENTATION=sdpa: DebertaV2ForSequenceClassification "
                                             "has no SDPA attention; set it to eager or auto"):
        load(attn_implementation="sdpa")


def test_non_finite_scores_never_advise_what_is_already_set():
    from reranker_serve.service import non_finite_message

    assert "RERANKER_DTYPE=float32" in non_finite_message("bfloat16", "torch")
    for backend in ("torch", "openvino"):
        assert "RERANKER_DTYPE=float32" not in non_finite_message("float32", backend)
    assert "RERANKER_BACKEND=torch" in non_finite_message("float32", "openvino")
    assert "RERANKER_BACKEND" not in non_finite_message("float32", "torch")


def test_a_model_that_scores_nan_on_torch_in_float32_gets_no_useless_advice(tmp_path):
    from safetensors.torch import load_file, save_file

    folder = build_bert(tmp_path / "broken")
    weights = load_file(folder / "model.safetensors")
    weights["classifier.bias"] = torch.full_like(weights["classifier.bias"], float("nan"))
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    srv = RunningServer(create_app(settings_for(folder, warmup_seconds=0)))
    try:
        reply = srv.client.post("/rerank", json={"query": QUERY, "documents": DOCS[:2]})
        assert reply.status_code == 503
        text = reply.text
        assert "non-finite" in text and "RERANKER_DTYPE=float32" not in text
        info = srv.client.get("/info").json()["models"][0]
        assert info["backend"] == "torch"  # OpenVINO's check found no agreement with torch's NaN
    finally:
        srv.stop()


def test_an_architecture_transformers_lacks_is_refused_with_its_remedy(folders, tmp_path):
    import shutil

    # GTE as Alibaba first published it: model_type "new", its code in another repository.
    folder = tmp_path / "gte-new"
    shutil.copytree(folders["gte"], folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="new", architectures=["NewForSequenceClassification"],
                  auto_map={"AutoConfig": "Alibaba-NLP/new-impl--configuration.NewConfig",
                            "AutoModelForSequenceClassification": "Alibaba-NLP/new-impl--modeling.NewForSequenceClassification"})
    (folder / "config.json").write_text(json.dumps(config))
    error = load_error(settings_for(folder, warmup_seconds=0))
    assert "model_type 'new' (NewForSequenceClassification) is not an architecture the installed transformers has" in error
    assert "RERANKER_TRUST_REMOTE_CODE=true" in error
