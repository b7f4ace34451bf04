"""Shared prompt prefixes of LLM rerankers: computed once per request, equal to the unshared forward.

Tiny Qwen3 and Gemma models built here (tests/llm_models.py). The truth is each pair run alone
through the transformers model, no padding, no cache, fp32; the shared path must agree within
1e-5, with batches that mix requests (different prefixes), chunked documents and lone pairs.
"""

from __future__ import annotations

import pytest
import torch

from conftest import DOCS, QUERY, RunningServer, settings_for
from llm_models import build_gemma, build_qwen3
from reranker_serve.app import create_app
from reranker_serve.config import Settings
from reranker_serve.device import Placement
from reranker_serve.models import EncodeOptions, load_model
from reranker_serve.models.base import Pair
from reranker_serve.models.prefix import mark_shared

LONG = "Paris is the capital of France and its largest city, on the river Seine. " * 20


@pytest.fixture(scope="module")
def llms(tmp_path_factory):
    base = tmp_path_factory.mktemp("prefix")
    return {"qwen3": build_qwen3(base / "qwen3", seed=3), "gemma": build_gemma(base / "gemma", seed=4)}


def load(folder, **options):
    spec = Settings(_env_file=None, model_path=folder, max_length=256, **options).model_specs[0]
    return load_model(spec, Placement("cpu", torch.float32))


def alone(model, pairs: list[Pair]) -> list[float]:
    """Each pair through the transformers model by itself: no padding, no cache."""
    hf = model._model
    out = []
    with torch.inference_mode():
        for p in pairs:
            logits = hf(input_ids=torch.tensor([p.ids]), use_cache=False).logits[0, -1].float()
            raw = logits[model._true] - (logits[model._false] if model._false is not None else 0)
            out.append(float(raw))
    return out


def test_the_shared_prefix_is_the_requests_common_tokens_and_nothing_else():
    pairs = [Pair([1, 2, 3, 4, 9]), Pair([1, 2, 3, 5]), Pair([1, 2, 3, 4, 7, 7])]
    assert [p.shared for p in mark_shared(pairs)] == [3, 3, 3]
    assert [p.ids for p in mark_shared(pairs)] == [p.ids for p in pairs]  # the tokens are untouched
    same = [Pair([1, 2, 3]), Pair([1, 2, 3])]
    assert [p.shared for p in mark_shared(same)] == [2, 2]  # each pair keeps one token of its own
    assert mark_shared(pairs[:1]) == pairs[:1]  # alone: nothing to share
    assert [p.shared for p in mark_shared([Pair([1, 2]), Pair([3, 4])])] == [0, 0]


@pytest.mark.parametrize("family", ["qwen3", "gemma"])
def test_prefix_ends_where_the_unshared_tokenization_stops_agreeing(llms, family):
    shared, unshared = load(llms[family]), load(llms[family], share_prefix=False)
    assert shared.share_prefix and not unshared.share_prefix
    options = EncodeOptions(max_length=256)
    a, b = shared.encode(QUERY, DOCS, options), unshared.encode(QUERY, DOCS, options)
    assert [p.ids for p in a] == [p.ids for p in b]  # identical tokens: sharing changes no id
    n = a[0].shared
    assert n > 0 and all(p.shared == n for p in a)
    assert all(p.ids[:n] == a[0].ids[:n] for p in a) and len({p.ids[n] for p in a}) > 1
    # The prefix holds the instruction and the query (the tokenizer decodes it back to them).
    text = shared.template.tokenizer.decode(a[0].ids[:n], skip_special_tokens=False)
    assert "capital of France" in text and "Paris is" not in text


@pytest.mark.parametrize("family", ["qwen3", "gemma"])
def test_shared_prefix_scores_equal_each_pair_alone(llms, family):
    model = load(llms[family])
    options = EncodeOptions(max_length=256)
    one = model.encode(QUERY, DOCS + [LONG], options)
    other = model.encode("Which city is the capital of Germany?", DOCS[:3], options)
    chunked = model.encode("capital", [LONG], EncodeOptions(max_length=200, max_chunks=3, chunk_overlap=8))
    assert len(chunked) == 3
    batch = one + other + chunked  # three prefixes of different lengths in one batch
    assert len({p.ids[: p.shared] and tuple(p.ids[: p.shared]) for p in batch}) == 3
    got = model.forward(batch)
    assert got == pytest.approx(alone(model, batch), abs=1e-5)
    assert model.forward(one[:1]) == pytest.approx(got[:1], abs=1e-5)  # a lone pair: the plain path
    unshared = load(llms[family], share_prefix=False)
    assert unshared.forward(batch) == pytest.approx(got, abs=1e-5)


def test_a_server_with_shared_prefixes_answers_like_one_without(llms):
    folder = llms["qwen3"]
    models = (f'[{{"model": "{folder}", "name": "shared"}}, '
              f'{{"model": "{folder}", "name": "unshared", "share_prefix": false}}]')
    srv = RunningServer(create_app(settings_for(folder, models=models, max_length=256)))
    try:
        body = {"query": QUERY, "documents": DOCS + [LONG], "raw_scores": True}
        a = srv.client.post("/rerank", json={**body, "model": "shared"}).json()["results"]
        b = srv.client.post("/rerank", json={**body, "model": "unshared"}).json()["results"]
        assert [r["index"] for r in a] == [r["index"] for r in b]
        assert [r["relevance_score"] for r in a] == pytest.approx([r["relevance_score"] for r in b], abs=1e-5)
    finally:
        srv.stop()


# -- unpadded: prefixes and suffixes packed, causal variable-length attention --------------------------
@pytest.mark.parametrize("family", ["qwen3", "gemma"])
def test_packed_causal_path_scores_equal_each_pair_alone(llms, family):
    # RERANKER_ATTENTION=unpadded on the CPU runs the packing with the reference kernel (the
    # varlen flash kernel is CUDA-only): the same code path the GPU runs, another kernel.
    model = load(llms[family], attention="unpadded")
    assert (model.attention, model.padded) == ("unpadded", False)
    assert "self-check passed" in model.attention_note
    options = EncodeOptions(max_length=256)
    batch = (model.encode(QUERY, DOCS + [LONG], options) + model.encode("Which city is in Germany?", DOCS[:3], options)
             + model.encode("capital", [LONG], EncodeOptions(max_length=200, max_chunks=3, chunk_overlap=8)))
    got = model.forward(batch)
    assert got == pytest.approx(alone(model, batch), abs=1e-5)
    unshared = load(llms[family], attention="unpadded", share_prefix=False)  # every pair its own prefix
    assert unshared.forward(batch) == pytest.approx(got, abs=1e-5)


def test_a_causal_kernel_that_cannot_run_leaves_the_model_padded(llms, monkeypatch):
    from reranker_serve.models import causal
    from reranker_serve.models.attention import torch_varlen_kernel

    # As if on a GPU: the plan picks torch's varlen kernel, which cannot run on this CPU.
    monkeypatch.setattr(causal, "plan_attention", lambda *a, **k: (torch_varlen_kernel, "auto on CUDA"))
    model = load(llms["qwen3"])
    assert model.attention == "padded" and "self-check failed" in model.attention_note
    pairs = model.encode(QUERY, DOCS, EncodeOptions(max_length=256))
    assert model.forward(pairs) == pytest.approx(alone(model, pairs), abs=1e-5)


def test_info_shows_the_llm_attention_path(llms):
    folder = llms["gemma"]
    srv = RunningServer(create_app(settings_for(folder, max_length=256, attention="unpadded")))
    try:
        assert srv.client.get("/info").json()["models"][0]["attention"] == "unpadded"
        r = srv.client.post("/rerank", json={"query": QUERY, "documents": DOCS, "raw_scores": True})
        by_index = {x["index"]: x["relevance_score"] for x in r.json()["results"]}
        model = load(folder, attention="padded")
        expected = alone(model, model.encode(QUERY, DOCS, EncodeOptions(max_length=256)))
        assert [by_index[i] for i in range(len(DOCS))] == pytest.approx(expected, abs=1e-5)
    finally:
        srv.stop()
