"""What the transformers-backed families (encoder.py, causal.py) read alike from a model's
config and tokenizer: its pad id and how many tokens a pair may have; and the per-layer score
head of the native layer-wise models (minicpm_layerwise.py, gemma2_lightweight.py).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .runners import POSITION_OFFSET_MODELS

__all__ = ["ScoreHead", "pad_id_of", "window_limit"]


class ScoreHead(nn.Module):
    """One layer's score head as FlagEmbedding publishes it (weights ``lm_head.{i}.linear_head.weight``)."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.linear_head = nn.Linear(hidden, 1, bias=False)


def window_limit(config: Any, hf_tokenizer: Any, requested: int) -> int:
    """Most tokens per pair: the setting, capped by the model's positions and the tokenizer's limit."""
    limit = int(getattr(config, "max_position_embeddings", requested) or requested)
    if config.model_type in POSITION_OFFSET_MODELS:
        limit -= int(config.pad_token_id or 0) + 1
    tok_limit = getattr(hf_tokenizer, "model_max_length", None)
    if isinstance(tok_limit, int) and 0 < tok_limit < 1_000_000:
        limit = min(limit, tok_limit)
    return min(requested, limit)


def pad_id_of(hf_tokenizer: Any, config: Any) -> int:
    for candidate in (hf_tokenizer.pad_token_id, getattr(config, "pad_token_id", None), hf_tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    return 0
