"""bge-reranker-v2-minicpm-layerwise without the model's own code (which needs transformers 4.4x).

The published architecture (FlagEmbedding's ``modeling_minicpm_reranker.py``) is a MiniCPM
decoder: Llama's attention, MLP and RMSNorm, with token embeddings scaled by ``scale_emb`` and
every residual branch by ``scale_depth / sqrt(num_hidden_layers)``; a one-output linear score
head for each layer from ``start_layer`` to the last (``head_type`` "simple", ``head_multi``).
Cutting off at layer c runs the first c layers, normalises their output with the final norm and
scores it with head c - start_layer: one score per position, as the published model returns it
(a tuple with one (pairs, positions) tensor per cutoff layer). transformers' own Llama modules
compute the layers, so the published checkpoint's weight names load as they are.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn

from .hf import ScoreHead

__all__ = ["LayerWiseMiniCPM", "minicpm_config"]


def minicpm_config(raw: dict[str, Any]) -> Any:
    """A transformers LlamaConfig of the published config.json, with MiniCPM's own fields kept."""
    from transformers import LlamaConfig

    head_type, multi = raw.get("head_type", "simple"), raw.get("head_multi", True)
    if head_type != "simple" or not multi:
        raise ValueError(f"head_type={head_type!r}, head_multi={multi!r}: the layer-wise reranker has one simple "
                         "score head per layer (head_type 'simple', head_multi true)")
    if raw.get("rope_scaling"):
        raise ValueError(f"rope_scaling={raw['rope_scaling']!r} is not the published model's (none)")
    if int(raw.get("pretraining_tp", 1)) != 1:
        raise ValueError("pretraining_tp > 1 is not the published model's")
    heads = int(raw["num_attention_heads"])
    config = LlamaConfig(
        vocab_size=raw["vocab_size"], hidden_size=raw["hidden_size"], intermediate_size=raw["intermediate_size"],
        num_hidden_layers=raw["num_hidden_layers"], num_attention_heads=heads,
        num_key_value_heads=raw.get("num_key_value_heads") or heads, hidden_act=raw.get("hidden_act", "silu"),
        max_position_embeddings=raw.get("max_position_embeddings", 2048), rms_norm_eps=raw.get("rms_norm_eps", 1e-6),
        rope_parameters={"rope_type": "default", "rope_theta": float(raw.get("rope_theta", 10000.0))},
        attention_bias=bool(raw.get("attention_bias", False)),
        pad_token_id=raw.get("pad_token_id"), bos_token_id=raw.get("bos_token_id", 1),
        eos_token_id=raw.get("eos_token_id", 2), tie_word_embeddings=False,
    )
    config.scale_emb = float(raw.get("scale_emb", 1))
    config.scale_depth = float(raw.get("scale_depth", 1))
    config.start_layer = int(raw.get("start_layer", 8))
    config.architectures = ["LayerWiseMiniCPMForCausalLM"]
    return config


@dataclass
class LayerWiseOutput:
    logits: tuple[torch.Tensor, ...]  # one (pairs, positions) float tensor per cutoff layer


class _Layer(nn.Module):
    def __init__(self, config: Any, index: int) -> None:
        from transformers.models.llama.modeling_llama import LlamaAttention, LlamaMLP, LlamaRMSNorm

        super().__init__()
        self.self_attn = LlamaAttention(config, index)
        self.mlp = LlamaMLP(config)
        self.input_layernorm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.residual_scale = config.scale_depth / math.sqrt(config.num_hidden_layers)

    def forward(self, x: torch.Tensor, *, mask: Any, position_embeddings: tuple[torch.Tensor, torch.Tensor]
                ) -> torch.Tensor:
        attended, _ = self.self_attn(self.input_layernorm(x), position_embeddings=position_embeddings,
                                     attention_mask=mask)
        x = x + attended * self.residual_scale
        return x + self.mlp(self.post_attention_layernorm(x)) * self.residual_scale


class _Decoder(nn.Module):
    def __init__(self, config: Any) -> None:
        from transformers.models.llama.modeling_llama import LlamaRMSNorm, LlamaRotaryEmbedding

        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        self.layers = nn.ModuleList(_Layer(config, i) for i in range(config.num_hidden_layers))
        self.norm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = LlamaRotaryEmbedding(config=config)


def _pretrained_base() -> type:
    from transformers.models.llama.modeling_llama import LlamaPreTrainedModel

    return LlamaPreTrainedModel  # type: ignore[no-any-return]


class LayerWiseMiniCPM(_pretrained_base()):  # type: ignore[misc]
    """The published forward interface: ``cutoff_layers`` in, ``logits`` (a tuple, one per layer) out."""

    _no_split_modules = ["_Layer"]

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.model = _Decoder(config)
        self.lm_head = nn.ModuleList(ScoreHead(config.hidden_size)
                                     for _ in range(config.start_layer, config.num_hidden_layers + 1))
        self.post_init()

    def get_output_embeddings(self) -> None:
        return None  # score heads, no vocabulary

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, cutoff_layers: Sequence[int] | None = None,
                **_: Any) -> LayerWiseOutput:
        from transformers.masking_utils import create_causal_mask

        config = self.config
        layers = [config.num_hidden_layers] if cutoff_layers is None else sorted(set(cutoff_layers))
        for layer in layers:
            if not config.start_layer <= layer <= config.num_hidden_layers:
                raise ValueError(f"cutoff layer {layer} is not in [{config.start_layer}, {config.num_hidden_layers}]")
        decoder = self.model
        x = decoder.embed_tokens(input_ids) * config.scale_emb
        if position_ids is None:
            position_ids = torch.arange(input_ids.shape[1], device=input_ids.device)[None]
        mask = create_causal_mask(config=config, inputs_embeds=x, attention_mask=attention_mask, cache=None,
                                  position_ids=position_ids)
        position_embeddings = decoder.rotary_emb(x, position_ids=position_ids)
        scores: dict[int, torch.Tensor] = {}
        for index, layer in enumerate(decoder.layers[: max(layers)], start=1):
            x = layer(x, mask=mask, position_embeddings=position_embeddings)
            if index in layers:
                head = self.lm_head[index - config.start_layer].linear_head
                scores[index] = head(decoder.norm(x)).float().reshape(input_ids.shape[0], -1)
        return LayerWiseOutput(logits=tuple(scores[layer] for layer in (cutoff_layers or layers)))
