"""Unpadded (packed) cross-encoder batches, the runner seam, and how the attention path is chosen.

The packed path must compute exactly what the padded one does (fp32: within 1e-5): same
positions (RoBERTa's start after the padding index), same token types, one result per pair in
order. Its variable-length kernel (torch's varlen_attn) is CUDA-only, so here the packing runs
with the reference kernel, and the choice between paths is tested with CUDA mocked: the
decision table, and the start-up self-check that falls back to padded when a kernel raises or
disagrees.
"""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

from conftest import DOCS, QUERY, RunningServer, settings_for
from reranker_serve.app import create_app
from reranker_serve.config import Settings
from reranker_serve.device import Placement, sdpa_backends
from reranker_serve.errors import ModelLoadError
from reranker_serve.models import EncodeOptions, load_model
from reranker_serve.models.attention import reference_kernel, torch_varlen_kernel
from reranker_serve.models.base import Pair
from reranker_serve.models.choice import plan_attention
from reranker_serve.models.encoder import apply_attention
from reranker_serve.models.runners import Feed, PaddedRunner, UnpaddedRunner, pack, padded_inputs

LONG = "Paris is the capital and most populous city of France, on the Seine. " * 12


def spec(folder, **options):
    return Settings(_env_file=None, model_path=folder, max_length=128, backend="torch", **options).model_specs[0]


# -- packing ----------------------------------------------------------------------------------------
def test_pack_lays_pairs_end_to_end_with_the_padded_paths_positions_and_types():
    from transformers.models.xlm_roberta.modeling_xlm_roberta import XLMRobertaEmbeddings

    batch = [Pair([0, 7, 8, 2], [0, 0, 1, 1]), Pair([0, 9, 2], [0, 1, 1]), Pair([0, 5, 1, 6, 2], [0, 0, 0, 1, 1])]
    packed = pack(batch, Feed(pad_id=1, with_types=True, position_padding_idx=1), device="cpu")
    assert packed.cu_seqlens.tolist() == [0, 4, 7, 12] and packed.cu_seqlens.dtype == torch.int32
    assert packed.max_len == 5 and packed.starts.tolist() == [0, 4, 7]
    assert packed.input_ids[0].tolist() == [0, 7, 8, 2, 0, 9, 2, 0, 5, 1, 6, 2]
    assert packed.token_type_ids[0].tolist() == [0, 0, 1, 1, 0, 1, 1, 0, 0, 0, 1, 1]
    # transformers' own RoBERTa positions on the padded batch, padding dropped: the same numbers
    # (a padding id inside a pair, 1 here, keeps padding_idx there, as in the padded path).
    padded = padded_inputs(batch, Feed(pad_id=1, with_types=True), device="cpu")
    expected = XLMRobertaEmbeddings.create_position_ids_from_input_ids(padded["input_ids"], 1)
    real = [expected[i, : len(p)].tolist() for i, p in enumerate(batch)]
    assert packed.position_ids[0].tolist() == sum(real, [])
    assert real[2] == [2, 3, 1, 4, 5]
    bert = pack(batch, Feed(pad_id=0, with_types=False), device="cpu")  # BERT: 0, 1, 2, ... per pair
    assert bert.position_ids[0].tolist() == [0, 1, 2, 3, 0, 1, 2, 0, 1, 2, 3, 4] and bert.token_type_ids is None


def _segments_dense(q, k, v, cu_q, cu_k, causal):
    # Independent check: one dense attention over everything with a block(-causal) mask.
    mask = torch.zeros(q.shape[0], k.shape[0], dtype=torch.bool)
    for (q0, q1), (k0, k1) in zip(zip(cu_q, cu_q[1:]), zip(cu_k, cu_k[1:])):
        for i in range(q1 - q0):
            visible = (k1 - k0) - (q1 - q0) + i + 1 if causal else k1 - k0
            mask[q0 + i, k0 : k0 + visible] = True
    groups = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1)
    return F.scaled_dot_product_attention(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1),
                                          attn_mask=mask).transpose(0, 1)


@pytest.mark.parametrize("causal", [False, True])
def test_reference_kernel_attends_within_each_segment(causal):
    torch.manual_seed(0)
    cu_q, cu_k = [0, 3, 4, 9], ([0, 7, 9, 16] if causal else [0, 3, 4, 9])  # causal: suffixes after prefixes
    q = torch.randn(cu_q[-1], 4, 8)
    k, v = torch.randn(cu_k[-1], 2, 8), torch.randn(cu_k[-1], 2, 8)  # grouped-query: 2 kv heads for 4
    got = reference_kernel(q, k, v, torch.tensor(cu_q), torch.tensor(cu_k), 5, 7, scale=None, causal=causal)
    assert torch.allclose(got, _segments_dense(q, k, v, cu_q, cu_k, causal), atol=1e-6)


# -- the runner: packed equals padded ---------------------------------------------------------------
def test_unpadded_xlm_roberta_scores_equal_padded(tiny_model, reference):
    padded = load_model(spec(tiny_model, attention="padded"), Placement("cpu", torch.float32))
    unpadded = load_model(spec(tiny_model, attention="unpadded"), Placement("cpu", torch.float32))
    assert (padded.attention, unpadded.attention) == ("padded", "unpadded")
    assert "self-check passed" in unpadded.attention_note
    docs = DOCS + [LONG, "Paris.", LONG[:200]]
    random.Random(1).shuffle(docs)
    pairs = unpadded.encode(QUERY, docs, EncodeOptions(max_length=128))
    assert len({len(p) for p in pairs}) > 3  # really different lengths in one batch
    got = unpadded.forward(pairs)
    assert got == pytest.approx(padded.forward(pairs), abs=1e-5)
    assert got == pytest.approx(reference.logits(QUERY, docs), abs=1e-5)  # in order, each its own pair's
    assert unpadded.forward(pairs[:1]) == pytest.approx(got[:1], abs=1e-5)


def test_unpadded_bert_with_token_types_equals_padded():
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64, type_vocab_size=2, num_labels=1,
                        initializer_range=0.5, attn_implementation="sdpa")
    model = BertForSequenceClassification(config).eval()
    rng = random.Random(0)
    batch = []
    for n in (5, 17, 9, 30, 2):
        a = rng.randint(1, n - 1)
        batch.append(Pair([rng.randint(1, 119) for _ in range(n)], [0] * a + [1] * (n - a)))
    feed = Feed(pad_id=0, with_types=True)
    with torch.inference_mode():
        expected = PaddedRunner(model, feed).logits(batch)
        got = UnpaddedRunner(model, feed, kernel=reference_kernel).logits(batch)
        # Token types matter: dropping them changes the scores, so the test can tell.
        untyped = UnpaddedRunner(model, Feed(pad_id=0, with_types=False), kernel=reference_kernel).logits(batch)
    assert torch.allclose(got, expected, atol=1e-5)
    assert not torch.allclose(untyped, expected, atol=1e-3)


def test_models_without_an_unpadded_path_say_why():
    from transformers import Qwen3Config, Qwen3ForSequenceClassification

    config = Qwen3Config(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=8, num_labels=1)
    with pytest.raises(ValueError, match="no unpadded path"):
        UnpaddedRunner(Qwen3ForSequenceClassification(config), Feed(0, False), kernel=reference_kernel)


# -- choosing the path ------------------------------------------------------------------------------
@pytest.mark.parametrize("setting,device,dtype,supported,varlen,expected", [
    ("auto", "cuda", torch.float16, None, True, "torch_varlen"),  # the GPU default
    ("auto", "cuda:1", torch.bfloat16, None, True, "torch_varlen"),
    ("auto", "cuda", torch.float32, None, True, "fp16 or bf16"),  # flash kernels: half precision only
    ("auto", "cuda", torch.float16, None, False, "no torch.nn.attention.varlen"),  # torch < 2.10
    ("auto", "cuda", torch.float16, "no unpadded path for X", True, "no unpadded path for X"),
    ("auto", "cpu", torch.float32, None, False, "padded on cpu"),
    ("auto", "mps", torch.float32, None, False, "padded on mps"),
    ("padded", "cuda", torch.float16, None, True, "RERANKER_ATTENTION=padded"),
    ("unpadded", "cuda", torch.float16, None, True, "torch_varlen"),
    ("unpadded", "cpu", torch.float32, None, False, "reference"),  # correct, not fast: for tests and checks
    ("unpadded", "cuda", torch.float32, None, True, "reference"),
])
def test_attention_plan_per_device(setting, device, dtype, supported, varlen, expected):
    kernel, why = plan_attention(setting, device=device, dtype=dtype, supported=supported, varlen_available=varlen)
    if expected in ("torch_varlen", "reference"):
        assert kernel is not None and kernel.name == expected
    else:
        assert kernel is None and expected in why


def test_required_unpadded_on_a_model_without_it_is_a_start_up_error():
    with pytest.raises(ModelLoadError, match="RERANKER_ATTENTION=unpadded: no unpadded path"):
        plan_attention("unpadded", device="cuda", dtype=torch.float16, supported="no unpadded path for X",
                       varlen_available=True)


def _fresh(tiny_model):
    reranker = load_model(spec(tiny_model, attention="padded"), Placement("cpu", torch.float32))
    runner = reranker.runner
    return reranker, runner.model, runner.feed


def test_a_kernel_that_raises_falls_back_to_padded_and_says_why(tiny_model):
    # torch's varlen kernel exists on this CPU build but cannot run here: exactly the situation
    # of a kernel met for the first time on a user's hardware.
    reranker, model, feed = _fresh(tiny_model)
    apply_attention(reranker, model, feed, kernel=torch_varlen_kernel, required=False)
    assert reranker.attention == "padded"
    assert "self-check failed" in reranker.attention_note and "Error" in reranker.attention_note
    pairs = reranker.encode(QUERY, DOCS, EncodeOptions(max_length=128))
    assert len(reranker.forward(pairs)) == len(DOCS)  # and it serves
    with pytest.raises(ModelLoadError, match="self-check failed"):
        apply_attention(reranker, model, feed, kernel=torch_varlen_kernel, required=True)


def test_a_kernel_that_disagrees_falls_back_to_padded(tiny_model):
    def drifting(*args, **kwargs):
        return reference_kernel(*args, **kwargs) * 1.01

    drifting.name = "drifting"
    reranker, model, feed = _fresh(tiny_model)
    apply_attention(reranker, model, feed, kernel=drifting, required=False)
    assert reranker.attention == "padded" and "differ from the padded path" in reranker.attention_note
    apply_attention(reranker, model, feed, kernel=reference_kernel, required=False)
    assert reranker.attention == "unpadded"


def test_padded_batches_on_cuda_never_use_cudnn_attention():
    before = torch.backends.cuda.cudnn_sdp_enabled()
    assert before  # torch's default: cuDNN attention allowed (and preferred on Hopper)
    with sdpa_backends("cuda"):
        assert not torch.backends.cuda.cudnn_sdp_enabled()
        assert torch.backends.cuda.mem_efficient_sdp_enabled() and torch.backends.cuda.flash_sdp_enabled()
    assert torch.backends.cuda.cudnn_sdp_enabled() == before  # restored after the batch
    with sdpa_backends("cpu"):  # nothing changes elsewhere
        assert torch.backends.cuda.cudnn_sdp_enabled()


# -- served ---------------------------------------------------------------------------------------------
def test_server_reports_and_serves_its_attention_path(tiny_model, reference):
    models = (f'[{{"model": "{tiny_model}", "name": "packed", "attention": "unpadded", "backend": "torch"}}, '
              f'{{"model": "{tiny_model}", "name": "default", "backend": "torch"}}]')
    srv = RunningServer(create_app(settings_for(tiny_model, models=models)))
    try:
        info = srv.client.get("/info").json()
        assert {m["name"]: m["attention"] for m in info["models"]} == {"packed": "unpadded", "default": "padded"}
        docs = DOCS + [LONG, "Paris."]
        got = srv.client.post("/rerank", json={"model": "packed", "query": QUERY, "documents": docs,
                                               "raw_scores": True}).json()
        expected = reference.logits(QUERY, docs)
        by_index = {r["index"]: r["relevance_score"] for r in got["results"]}
        assert [by_index[i] for i in range(len(docs))] == pytest.approx(expected, abs=1e-5)
    finally:
        srv.stop()
