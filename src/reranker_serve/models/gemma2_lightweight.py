"""bge-reranker-v2.5-gemma2-lightweight without the model's own code (which needs transformers 4.4x).

The published architecture (FlagEmbedding's ``gemma_model.py``, ``CostWiseGemmaForCausalLM``) is
a Gemma-2 decoder (transformers' own Gemma-2 layers compute it here: sliding-window attention
on every other layer, attention logit softcapping, the four RMSNorms) with three additions:

- token compression: before running layer ``idx`` in ``compress_layer`` (never the first),
  each pair's passage tokens are replaced by the means of consecutive groups of
  ``compress_ratio`` (the last group may be shorter); the query before and the prompt after it
  are kept, rows are re-padded on the right and positions restart at 0;
- per-layer score heads (``layer_wise``): layers ``start_layer, start_layer + layer_sep, ...``;
  cutting off at layer c normalises the hidden state after c layers with the final norm (and
  returns the attention mask then in force: compression shortens rows);
- the i-th score returned comes from the i-th head, soft-capped by ``final_logit_softcapping``.

Weight names are the published checkpoint's, so it loads as it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from loguru import logger
from torch import nn

from .hf import ScoreHead

__all__ = ["CostWiseGemma", "compress_tokens", "cost_wise_config"]

_REQUIRED = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")


def cost_wise_config(raw: dict[str, Any]) -> Any:
    """A transformers Gemma2Config of the published config.json, with the reranker's fields kept."""
    from transformers import Gemma2Config

    missing = [key for key in _REQUIRED if key not in raw]
    if missing:
        raise ValueError(f"config.json has no {', '.join(missing)}")
    if not raw.get("layer_wise", False):
        raise ValueError("layer_wise is false: the lightweight reranker scores with its per-layer heads")
    heads = int(raw["num_attention_heads"])
    head_dim = int(raw.get("head_dim") or raw["hidden_size"] // heads)
    config = Gemma2Config(
        vocab_size=raw["vocab_size"], hidden_size=raw["hidden_size"], intermediate_size=raw["intermediate_size"],
        num_hidden_layers=raw["num_hidden_layers"], num_attention_heads=heads,
        num_key_value_heads=raw.get("num_key_value_heads") or heads, head_dim=head_dim,
        hidden_activation=raw.get("hidden_activation") or raw.get("hidden_act") or "gelu_pytorch_tanh",
        max_position_embeddings=raw.get("max_position_embeddings", 8192), rms_norm_eps=raw.get("rms_norm_eps", 1e-6),
        rope_parameters={"rope_type": "default", "rope_theta": float(raw.get("rope_theta", 10000.0))},
        attention_bias=bool(raw.get("attention_bias", False)),
        query_pre_attn_scalar=raw.get("query_pre_attn_scalar", head_dim),
        sliding_window=raw.get("sliding_window", 4096),
        final_logit_softcapping=raw.get("final_logit_softcapping"),
        attn_logit_softcapping=raw.get("attn_logit_softcapping"),
        pad_token_id=raw.get("pad_token_id", 0), bos_token_id=raw.get("bos_token_id", 2),
        eos_token_id=raw.get("eos_token_id", 1), tie_word_embeddings=False,
    )
    config.start_layer = int(raw.get("start_layer", 28))
    config.layer_sep = int(raw.get("layer_sep", 28))
    config.architectures = ["CostWiseGemmaForCausalLM"]
    return config


def compress_tokens(x: torch.Tensor, mask: torch.Tensor, query_lengths: Sequence[int], prompt_lengths: Sequence[int],
                    ratio: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded rows ``query | passage | prompt``: the passage as means of groups of ``ratio``."""
    rows = []
    for i, (q, p) in enumerate(zip(query_lengths, prompt_lengths)):
        n = int(mask[i].sum())
        passage = x[i, q : n - p]
        groups = [passage[j : j + ratio].mean(dim=0) for j in range(0, passage.shape[0], ratio)]
        rows.append(torch.cat([x[i, :q], *([torch.stack(groups)] if groups else []), x[i, n - p : n]]))
    width = max(r.shape[0] for r in rows)
    out = x.new_zeros((x.shape[0], width, x.shape[2]))
    new_mask = mask.new_zeros((x.shape[0], width))
    for i, row in enumerate(rows):
        out[i, : row.shape[0]] = row
        new_mask[i, : row.shape[0]] = 1
    return out, new_mask


@dataclass
class CostWiseOutput:
    logits: tuple[torch.Tensor, ...]  # one (pairs, positions) float tensor per cutoff layer
    attention_masks: tuple[torch.Tensor, ...]  # the mask in force at each (rows shrink when compressed)


class _Decoder(nn.Module):
    def __init__(self, config: Any) -> None:
        from transformers.models.gemma2.modeling_gemma2 import (
            Gemma2DecoderLayer, Gemma2RMSNorm, Gemma2RotaryEmbedding,
        )

        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        self.layers = nn.ModuleList(Gemma2DecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = Gemma2RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = Gemma2RotaryEmbedding(config=config)


def _pretrained_base() -> type:
    from transformers.models.gemma2.modeling_gemma2 import Gemma2PreTrainedModel

    return Gemma2PreTrainedModel  # type: ignore[no-any-return]


class CostWiseGemma(_pretrained_base()):  # type: ignore[misc]
    """The published forward interface: ``cutoff_layers``, ``compress_layer``, ``compress_ratio``,
    ``query_lengths``, ``prompt_lengths`` in; ``logits`` and ``attention_masks`` (tuples) out."""

    _no_split_modules = ["Gemma2DecoderLayer"]

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.model = _Decoder(config)
        usable = range(config.start_layer, config.num_hidden_layers + 1, config.layer_sep)
        self.lm_head = nn.ModuleList(ScoreHead(config.hidden_size) for _ in usable)
        self.post_init()

    def get_output_embeddings(self) -> None:
        return None  # score heads, no vocabulary

    def _masks(self, x: torch.Tensor, mask: torch.Tensor, position_ids: torch.Tensor) -> dict[str, Any]:
        from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

        kwargs = dict(config=self.config, inputs_embeds=x, attention_mask=mask, cache=None, position_ids=position_ids)
        return {"full_attention": create_causal_mask(**kwargs),
                "sliding_attention": create_sliding_window_causal_mask(**kwargs)}

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                cutoff_layers: Sequence[int] | None = None, compress_layer: Sequence[int] | None = None,
                compress_ratio: int | None = None, query_lengths: Sequence[int] | None = None,
                prompt_lengths: Sequence[int] | None = None, **_: Any) -> CostWiseOutput:
        config = self.config
        usable = list(range(config.start_layer, config.num_hidden_layers + 1, config.layer_sep))
        # Unset: the last layer with a head. (The published code defaults to the last layer, which
        # has no head in the published model: its only head is at 28 of 42.)
        wanted = [usable[-1]] if cutoff_layers is None else list(cutoff_layers)
        layers = [layer for layer in wanted if layer in usable]
        if len(layers) < len(wanted):
            logger.warning("cutoff layers {} have no score head (the heads are at {}); ignored",
                           [layer for layer in wanted if layer not in usable], usable)
        if not layers:
            raise ValueError(f"no cutoff layer with a score head: set RERANKER_CUTOFF_LAYER to one of {usable}")
        compressing = compress_ratio not in (None, 1) and bool(compress_layer)
        batch = input_ids.shape[0]
        queries = list(query_lengths) if query_lengths is not None else [0] * batch
        prompts = list(prompt_lengths) if prompt_lengths is not None else [0] * batch
        mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
        decoder = self.model
        x = decoder.embed_tokens(input_ids)
        x = x * torch.tensor(config.hidden_size**0.5, dtype=x.dtype)  # rounded to the dtype, as Gemma does
        positions = torch.arange(x.shape[1], device=x.device)[None]
        masks = self._masks(x, mask, positions)
        rope = decoder.rotary_emb(x, positions)
        hidden, kept = [], []
        for index, layer in enumerate(decoder.layers):
            if index in layers:
                hidden.append(decoder.norm(x))
                kept.append(mask)
            if index == max(layers):
                break
            if compressing and index != 0 and index in compress_layer:  # type: ignore[operator]
                x, mask = compress_tokens(x, mask, queries, prompts, int(compress_ratio))  # type: ignore[arg-type]
                positions = torch.arange(x.shape[1], device=x.device)[None]
                masks = self._masks(x, mask, positions)
                rope = decoder.rotary_emb(x, positions)
            x = layer(x, position_embeddings=rope, attention_mask=masks[config.layer_types[index]],
                      position_ids=positions)
        else:
            hidden.append(decoder.norm(x))
            kept.append(mask)
        cap = config.final_logit_softcapping
        logits = []
        for head, state in zip(self.lm_head, hidden):  # the i-th score from the i-th head, as published
            score = head.linear_head(state)
            if cap is not None:
                score = torch.tanh(score / cap) * cap
            logits.append(score.float().reshape(state.shape[0], -1))
        return CostWiseOutput(logits=tuple(logits), attention_masks=tuple(kept))
