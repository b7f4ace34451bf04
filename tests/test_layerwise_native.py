"""bge-reranker-v2-minicpm-layerwise served without remote code, against the published algorithm.

The checkpoint is written here in the published layout (config.json fields and weight names of
FlagEmbedding's modeling_minicpm_reranker.py, random weights, 4 layers, score heads from layer
2); the reference below computes the published forward pass from those tensors by hand, one
pair at a time, with the pair built as FlagEmbedding's LayerWiseFlagLLMReranker builds it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from conftest import RunningServer, settings_for
from llm_models import _spm_like_tokenizer
from reranker_serve.app import create_app

QUERY = "What is the capital of France?"
SENTENCE = "Paris is the capital and most populous city of France, on the river Seine. "
DOCS = ["Paris.", "Berlin is the capital of Germany.", SENTENCE * 3, "The cat sat on the mat.", SENTENCE * 9]
PROMPT = ("Given a query A and a passage B, determine whether the passage contains an answer to the query by "
          "providing a prediction of either 'Yes' or 'No'.")
CONFIG = dict(vocab_size=None, hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
              num_key_value_heads=2, hidden_act="silu", max_position_embeddings=1024, rms_norm_eps=1e-6,
              rope_theta=10000.0, rope_scaling=None, scale_emb=12, dim_model_base=256, scale_depth=1.4,
              start_layer=2, head_type="simple", head_multi=True, pretraining_tp=1, attention_bias=False,
              pad_token_id=0, bos_token_id=2, eos_token_id=1, tie_word_embeddings=False, model_type="minicpm",
              architectures=["LayerWiseMiniCPMForCausalLM"],
              auto_map={"AutoConfig": "configuration_minicpm_reranker.LayerWiseMiniCPMConfig",
                        "AutoModelForCausalLM": "modeling_minicpm_reranker.LayerWiseMiniCPMForCausalLM"})


def build_minicpm_layerwise(out: Path, seed: int = 0) -> Path:
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    tok = _spm_like_tokenizer(out)
    config = dict(CONFIG, vocab_size=tok.get_vocab_size())
    (out / "config.json").write_text(json.dumps(config))
    g = torch.Generator().manual_seed(seed)
    h, inter, heads, kv = config["hidden_size"], config["intermediate_size"], 4, 2
    d = h // heads

    def rand(*shape, scale=0.3):
        return (torch.randn(*shape, generator=g) * scale).contiguous()

    weights = {"model.embed_tokens.weight": rand(config["vocab_size"], h, scale=0.1),
               "model.norm.weight": 1 + rand(h, scale=0.1)}
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        weights.update({
            p + "self_attn.q_proj.weight": rand(heads * d, h), p + "self_attn.k_proj.weight": rand(kv * d, h),
            p + "self_attn.v_proj.weight": rand(kv * d, h), p + "self_attn.o_proj.weight": rand(h, heads * d),
            p + "mlp.gate_proj.weight": rand(inter, h), p + "mlp.up_proj.weight": rand(inter, h),
            p + "mlp.down_proj.weight": rand(h, inter),
            p + "input_layernorm.weight": 1 + rand(h, scale=0.1), p + "post_attention_layernorm.weight": 1 + rand(h, scale=0.1),
        })
    for j in range(config["num_hidden_layers"] - config["start_layer"] + 1):
        weights[f"lm_head.{j}.linear_head.weight"] = rand(1, h)
    save_file(weights, out / "model.safetensors", metadata={"format": "pt"})
    return out


class PublishedLayerwise:
    """FlagEmbedding's LayerWiseMiniCPMForCausalLM forward (head_type simple, head_multi), by hand."""

    def __init__(self, folder: Path) -> None:
        from safetensors.torch import load_file
        from transformers import AutoTokenizer

        self.w = load_file(folder / "model.safetensors")
        self.c = json.loads((folder / "config.json").read_text())
        self.tokenizer = AutoTokenizer.from_pretrained(folder)

    def ids(self, query: str, doc: str, max_length: int = 512) -> list[int]:
        # LayerWiseFlagLLMReranker.compute_score: [bos] + "A: q", then "\n" + "B: p", then "\n" + prompt.
        tok = self.tokenizer
        q = tok(f"A: {query}", add_special_tokens=False, max_length=max_length * 3 // 4, truncation=True)["input_ids"]
        p = tok(f"B: {doc}", add_special_tokens=False, max_length=max_length, truncation=True)["input_ids"]
        sep = tok("\n", add_special_tokens=False)["input_ids"]
        prompt = tok(PROMPT, add_special_tokens=False)["input_ids"]
        return [tok.bos_token_id] + q + sep + p + sep + prompt

    def _rms(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.c["rms_norm_eps"]) * weight

    def score(self, ids: list[int], cutoff: int) -> float:
        w, c = self.w, self.c
        heads, kv, h = c["num_attention_heads"], c["num_key_value_heads"], c["hidden_size"]
        d, n = h // heads, len(ids)
        x = w["model.embed_tokens.weight"][torch.tensor(ids)] * c["scale_emb"]
        inv = 1.0 / (c["rope_theta"] ** (torch.arange(0, d, 2).float() / d))
        freqs = torch.outer(torch.arange(n).float(), inv)
        cos, sin = torch.cat([freqs, freqs], -1).cos(), torch.cat([freqs, freqs], -1).sin()

        def rope(t):  # rotate_half, as MiniCPM's apply_rotary_pos_emb
            half = t.shape[-1] // 2
            rotated = torch.cat([-t[..., half:], t[..., :half]], -1)
            return t * cos + rotated * sin

        scale = c["scale_depth"] / math.sqrt(c["num_hidden_layers"])
        causal = torch.ones(n, n, dtype=torch.bool).tril()
        for i in range(cutoff):
            p = f"model.layers.{i}."
            a = self._rms(x, w[p + "input_layernorm.weight"])
            q = (a @ w[p + "self_attn.q_proj.weight"].T).view(n, heads, d).transpose(0, 1)
            k = (a @ w[p + "self_attn.k_proj.weight"].T).view(n, kv, d).transpose(0, 1)
            v = (a @ w[p + "self_attn.v_proj.weight"].T).view(n, kv, d).transpose(0, 1)
            q, k = rope(q), rope(k)
            k, v = k.repeat_interleave(heads // kv, 0), v.repeat_interleave(heads // kv, 0)
            att = (q @ k.transpose(1, 2)) / math.sqrt(d)
            att = att.masked_fill(~causal, float("-inf")).softmax(-1)
            o = (att @ v).transpose(0, 1).reshape(n, h) @ w[p + "self_attn.o_proj.weight"].T
            x = x + o * scale
            m = self._rms(x, w[p + "post_attention_layernorm.weight"])
            m = (torch.nn.functional.silu(m @ w[p + "mlp.gate_proj.weight"].T) * (m @ w[p + "mlp.up_proj.weight"].T))
            x = x + (m @ w[p + "mlp.down_proj.weight"].T) * scale
        x = self._rms(x, w["model.norm.weight"])
        head = w[f"lm_head.{cutoff - c['start_layer']}.linear_head.weight"]
        return float(x[-1] @ head[0])

    def scores(self, docs: list[str], cutoff: int) -> list[float]:
        return [1 / (1 + math.exp(-self.score(self.ids(QUERY, doc), cutoff))) for doc in docs]


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return build_minicpm_layerwise(tmp_path_factory.mktemp("minicpm") / "bge-reranker-v2-minicpm-layerwise")


@pytest.fixture(scope="module")
def server(folder):
    entries = [{"model": str(folder), "name": "last"}, {"model": str(folder), "name": "cut3", "cutoff_layer": 3}]
    srv = RunningServer(create_app(settings_for(folder, models=json.dumps(entries), max_length=512,
                                                warmup_seconds=0)))
    yield srv
    srv.stop()


def scores(srv: RunningServer, model: str, docs: list[str]) -> list[float]:
    reply = srv.client.post("/rerank", json={"model": model, "query": QUERY, "documents": docs})
    assert reply.status_code == 200, reply.text
    got = {r["index"]: r["relevance_score"] for r in reply.json()["results"]}
    return [got[i] for i in range(len(docs))]


@pytest.mark.parametrize("name,cutoff", [("last", 4), ("cut3", 3)])
def test_layerwise_minicpm_runs_natively_and_scores_as_published(server, folder, name, cutoff):
    info = {m["name"]: m for m in server.client.get("/info").json()["models"]}[name]
    assert info["family"] == "layerwise" and info["backend"] == "torch"
    expected = PublishedLayerwise(folder).scores(DOCS, cutoff)
    assert scores(server, name, DOCS) == pytest.approx(expected, abs=1e-4)


def test_a_cutoff_layer_without_a_score_head_is_refused_at_start(folder):
    from conftest import load_error

    error = load_error(settings_for(folder, cutoff_layer=1, warmup_seconds=0))
    assert "cutoff layer 1 is not in [2, 4]" in error


# -- bge-reranker-v2.5-gemma2-lightweight ---------------------------------------------------------------
LIGHT_PROMPT = "Predict whether passage B contains an answer to query A."
GEMMA2 = dict(vocab_size=None, hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
              num_key_value_heads=2, head_dim=8, hidden_activation="gelu_pytorch_tanh", max_position_embeddings=1024,
              rms_norm_eps=1e-6, rope_theta=10000.0, attention_bias=False, query_pre_attn_scalar=8,
              sliding_window=16, final_logit_softcapping=3.0, attn_logit_softcapping=5.0, start_layer=2, layer_sep=1,
              layer_wise=True, pad_token_id=0, eos_token_id=1, bos_token_id=2, model_type="cost_wise_gemma",
              architectures=["CostWiseGemmaForCausalLM"],
              auto_map={"AutoConfig": "gemma_config.CostWiseGemmaConfig",
                        "AutoModelForCausalLM": "gemma_model.CostWiseGemmaForCausalLM"})


def build_gemma2_lightweight(out: Path, seed: int = 1) -> Path:
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    tok = _spm_like_tokenizer(out)
    config = dict(GEMMA2, vocab_size=tok.get_vocab_size())
    (out / "config.json").write_text(json.dumps(config))
    g = torch.Generator().manual_seed(seed)
    h, inter, heads, kv, d = 32, 64, 4, 2, 8

    def rand(*shape, scale=0.3):
        return (torch.randn(*shape, generator=g) * scale).contiguous()

    weights = {"model.embed_tokens.weight": rand(config["vocab_size"], h, scale=0.1), "model.norm.weight": rand(h, scale=0.1)}
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        weights.update({
            p + "self_attn.q_proj.weight": rand(heads * d, h), p + "self_attn.k_proj.weight": rand(kv * d, h),
            p + "self_attn.v_proj.weight": rand(kv * d, h), p + "self_attn.o_proj.weight": rand(h, heads * d),
            p + "mlp.gate_proj.weight": rand(inter, h), p + "mlp.up_proj.weight": rand(inter, h),
            p + "mlp.down_proj.weight": rand(h, inter),
        })
        for norm in ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm",
                     "post_feedforward_layernorm"):
            weights[p + norm + ".weight"] = rand(h, scale=0.1)
    for j in range(3):  # heads at layers 2, 3, 4
        weights[f"lm_head.{j}.linear_head.weight"] = rand(1, h)
    save_file(weights, out / "model.safetensors", metadata={"format": "pt"})
    return out


class PublishedLightweight:
    """FlagEmbedding's CostWiseGemmaForCausalLM (layer_wise) and LightweightLLMReranker, by hand."""

    def __init__(self, folder: Path) -> None:
        from safetensors.torch import load_file
        from transformers import AutoTokenizer

        self.w = load_file(folder / "model.safetensors")
        self.c = json.loads((folder / "config.json").read_text())
        self.tokenizer = AutoTokenizer.from_pretrained(folder)

    def parts(self, doc: str) -> tuple[list[int], int, int]:
        tok = self.tokenizer
        q = tok(f"A: {QUERY}", add_special_tokens=False)["input_ids"]
        p = tok(f"B: {doc}", add_special_tokens=False)["input_ids"]
        sep = tok("\n", add_special_tokens=False)["input_ids"]
        prompt = tok(LIGHT_PROMPT, add_special_tokens=False)["input_ids"]
        head = [tok.bos_token_id] + q + sep
        return head + p + sep + prompt, len(head), len(sep + prompt)

    def _rms(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:  # Gemma: (1 + w)
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.c["rms_norm_eps"]) * (1 + weight)

    def score(self, doc: str, cutoff: int, ratio: int = 1, at: tuple[int, ...] = ()) -> float:
        w, c = self.w, self.c
        ids, q_len, p_len = self.parts(doc)
        heads, kv, h, d = c["num_attention_heads"], c["num_key_value_heads"], c["hidden_size"], c["head_dim"]
        x = w["model.embed_tokens.weight"][torch.tensor(ids)] * (h ** 0.5)
        for i in range(cutoff):
            if ratio > 1 and i in at and i != 0:  # token_compress: query | passage group means | prompt
                n = x.shape[0]
                passage = x[q_len : n - p_len]
                means = [passage[j : j + ratio].mean(0) for j in range(0, passage.shape[0], ratio)]
                x = torch.cat([x[:q_len], torch.stack(means), x[n - p_len :]])
            n = x.shape[0]
            inv = 1.0 / (c["rope_theta"] ** (torch.arange(0, d, 2).float() / d))
            freqs = torch.outer(torch.arange(n).float(), inv)
            cos, sin = torch.cat([freqs, freqs], -1).cos(), torch.cat([freqs, freqs], -1).sin()

            def rope(t):
                rotated = torch.cat([-t[..., d // 2 :], t[..., : d // 2]], -1)
                return t * cos + rotated * sin

            p = f"model.layers.{i}."
            a = self._rms(x, w[p + "input_layernorm.weight"])
            qs = rope((a @ w[p + "self_attn.q_proj.weight"].T).view(n, heads, d).transpose(0, 1))
            ks = rope((a @ w[p + "self_attn.k_proj.weight"].T).view(n, kv, d).transpose(0, 1))
            vs = (a @ w[p + "self_attn.v_proj.weight"].T).view(n, kv, d).transpose(0, 1)
            ks, vs = ks.repeat_interleave(heads // kv, 0), vs.repeat_interleave(heads // kv, 0)
            att = (qs @ ks.transpose(1, 2)) * c["query_pre_attn_scalar"] ** -0.5
            att = torch.tanh(att / c["attn_logit_softcapping"]) * c["attn_logit_softcapping"]
            rows, cols = torch.arange(n)[:, None], torch.arange(n)[None]
            allowed = cols <= rows
            if i % 2 == 0:  # Gemma-2: even layers attend within the sliding window
                allowed &= rows - cols < c["sliding_window"]
            att = att.masked_fill(~allowed, float("-inf")).softmax(-1)
            o = (att @ vs).transpose(0, 1).reshape(n, heads * d) @ w[p + "self_attn.o_proj.weight"].T
            x = x + self._rms(o, w[p + "post_attention_layernorm.weight"])
            m = self._rms(x, w[p + "pre_feedforward_layernorm.weight"])
            gate = torch.nn.functional.gelu(m @ w[p + "mlp.gate_proj.weight"].T, approximate="tanh")
            m = (gate * (m @ w[p + "mlp.up_proj.weight"].T)) @ w[p + "mlp.down_proj.weight"].T
            x = x + self._rms(m, w[p + "post_feedforward_layernorm.weight"])
        x = self._rms(x, w["model.norm.weight"])
        # The first (only) cutoff layer's score comes from the first head, as published.
        raw = float(x[-1] @ w["lm_head.0.linear_head.weight"][0])
        cap = c["final_logit_softcapping"]
        return 1 / (1 + math.exp(-math.tanh(raw / cap) * cap))


@pytest.fixture(scope="module")
def light_folder(tmp_path_factory) -> Path:
    return build_gemma2_lightweight(tmp_path_factory.mktemp("gemma2") / "bge-reranker-v2.5-gemma2-lightweight")


@pytest.fixture(scope="module")
def light_server(light_folder):
    entries = [{"model": str(light_folder), "name": "plain"},  # cutoff unset: the last layer with a head, 4
               {"model": str(light_folder), "name": "compressed", "cutoff_layer": 3, "compress_ratio": 2,
                "compress_layers": [2]}]
    srv = RunningServer(create_app(settings_for(light_folder, models=json.dumps(entries), max_length=512,
                                                warmup_seconds=0)))
    yield srv
    srv.stop()


@pytest.mark.parametrize("name,cutoff,ratio", [("plain", 4, 1), ("compressed", 3, 2)])
def test_gemma2_lightweight_runs_natively_and_scores_as_published(light_server, light_folder, name, cutoff, ratio):
    info = {m["name"]: m for m in light_server.client.get("/info").json()["models"]}[name]
    assert info["family"] == "lightweight"
    reference = PublishedLightweight(light_folder)
    assert max(len(reference.parts(doc)[0]) for doc in DOCS) > 4 * GEMMA2["sliding_window"]
    expected = [reference.score(doc, cutoff, ratio, at=(2,)) for doc in DOCS]
    assert scores(light_server, name, DOCS) == pytest.approx(expected, abs=1e-4)
