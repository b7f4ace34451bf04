"""FlagEmbedding's layer-wise rerankers.

    layerwise    bge-reranker-v2-minicpm-layerwise: a score head after several layers; the model
                 stops at ``cutoff_layers`` and returns one score per position for each of them.
                 Runs on this package's own implementation of the published architecture
                 (minicpm_layerwise.py, no remote code).
    lightweight  bge-reranker-v2.5-gemma2-lightweight: the same, plus token compression of the
                 passage from ``compress_layer`` on at ``compress_ratio``; it needs to know where
                 the query ends and the prompt begins, so pairs are padded on the right. Runs on
                 this package's implementation of the published architecture (gemma2_lightweight.py).

With RERANKER_TRUST_REMOTE_CODE=true both run the model's own code instead (written for
transformers 4.4x).

Both take FlagEmbedding's prompt ("A: query", "B: passage", prompt) and score one pair by the
output of the chosen cutoff layer at its last real token; the score is its sigmoid
(``compute_score(normalize=True)``). RERANKER_CUTOFF_LAYER picks the layer (unset: the model's
own default, its last), RERANKER_COMPRESS_RATIO and RERANKER_COMPRESS_LAYERS pass through.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from ..config import ModelSpec
from ..device import Placement
from ..errors import ModelLoadError
from ..families import Family
from .architectures import attn_implementation
from .base import Pair, pad
from .causal import PromptedLM, flag_bos, load_hf
from .templates import FLAG_LIGHTWEIGHT_PROMPT, FLAG_LLM_PROMPT, flag_llm_template, rust_tokenizer

__all__ = ["LayerwiseReranker", "load_layerwise"]


class LayerwiseReranker(PromptedLM):
    def __init__(self, model: Any, hf_tokenizer: Any, *, cutoff_layer: int | None, compress: bool,
                 compress_ratio: int, compress_layers: Sequence[int], **common: Any) -> None:
        super().__init__(model, hf_tokenizer, **common)
        self._compress = compress
        self._kwargs: dict[str, Any] = {"output_hidden_states": True}
        if cutoff_layer is not None:
            self._kwargs["cutoff_layers"] = [cutoff_layer]
        if compress:
            self._kwargs.update(compress_ratio=compress_ratio, compress_layer=list(compress_layers))

    @torch.inference_mode()
    def forward(self, batch: Sequence[Pair]) -> list[float]:
        if self._compress:
            # Compression finds the passage by lengths counted from the start: right padding.
            inputs = pad(batch, self._pad_id, side="right", device=self.device)
            out = self._model(**inputs, **self._kwargs, query_lengths=[p.before_doc for p in batch],
                              prompt_lengths=[p.after_doc for p in batch])
            # One score per position of the first cutoff layer; its mask says where each pair ends
            # after compression.
            scores, mask = out.logits[0], out.attention_masks[0]
            last = mask.sum(dim=1).long() - 1
            raw = scores[torch.arange(len(batch), device=scores.device), last]
        else:
            inputs = pad(batch, self._pad_id, side="left", device=self.device)
            raw = self._model(**inputs, **self._kwargs).logits[0][:, -1]
        return raw.float().cpu().tolist()


def load_native(spec: ModelSpec, *, family: Family, placement: Placement) -> tuple[Any, Any]:
    """The published architecture on this package's own modules (minicpm_layerwise.py,
    gemma2_lightweight.py): no code from the model's folder runs."""
    import transformers
    from transformers import PretrainedConfig

    from .gemma2_lightweight import CostWiseGemma, cost_wise_config
    from .minicpm_layerwise import LayerWiseMiniCPM, minicpm_config

    common: dict[str, Any] = dict(cache_dir=None if spec.local else str(spec.cache_dir), local_files_only=spec.offline)
    raw, _ = PretrainedConfig.get_config_dict(spec.source, **common)
    try:
        config = cost_wise_config(raw) if family.compresses else minicpm_config(raw)
    except (KeyError, ValueError) as exc:
        detail = f"no {exc}" if isinstance(exc, KeyError) else str(exc)
        raise ModelLoadError(
            f"{spec.describe()} is not the published {family.description} architecture ({detail}); if it ships "
            "code of its own, set RERANKER_TRUST_REMOTE_CODE=true to run that"
        ) from None
    # Gemma-2's attention soft-caps its logits, which SDPA cannot: eager, as the published model ran.
    implementation = "eager" if family.compresses else (attn_implementation(spec, auto_class="AutoModelForCausalLM",
                                                                            config=config)[0] or "sdpa")
    tokenizer = transformers.AutoTokenizer.from_pretrained(spec.source, **common)
    model_class = CostWiseGemma if family.compresses else LayerWiseMiniCPM
    model = model_class.from_pretrained(spec.source, config=config, dtype=placement.dtype,
                                        attn_implementation=implementation, **common)
    return model.to(placement.device), tokenizer


def load_layerwise(spec: ModelSpec, *, family: Family, placement: Placement, backend: str) -> LayerwiseReranker:
    if spec.trust_remote_code:  # the model's own code, as it asked for
        model, hf_tokenizer = load_hf(spec, placement)
    else:
        model, hf_tokenizer = load_native(spec, family=family, placement=placement)
    default = FLAG_LIGHTWEIGHT_PROMPT if family.compresses else FLAG_LLM_PROMPT
    template = flag_llm_template(rust_tokenizer(hf_tokenizer), bos=flag_bos(hf_tokenizer),
                                 prompt=spec.instruction or default)
    return LayerwiseReranker(model, hf_tokenizer, name=spec.name, family=family.name, max_length=spec.max_length,
                             template=template, cutoff_layer=spec.cutoff_layer, compress=family.compresses,
                             compress_ratio=spec.compress_ratio, compress_layers=spec.compress_layers)
