"""Sequence-classification rerankers: bge-reranker-v2-m3 / -large / -base and any one-label
``*ForSequenceClassification`` model (two-label models score as P(label 1)); also the converted
Qwen3-Reranker ``-seq-cls`` checkpoints, which are decoders fed the Qwen3 prompt.

Loading goes through sentence-transformers' ``CrossEncoder`` (hub download, cache, offline,
dtype, attention implementation). Scoring does not go through ``CrossEncoder.predict``: the
engine needs the pairs tokenized once, counted, truncated its way and batched across requests,
so pairs come from a template (templates.py) and the transformers model is called directly for
raw logits. The activation (sigmoid, as FlagEmbedding's ``compute_score(normalize=True)``) is
applied in ``activate`` and nowhere else.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from .base import EncodeOptions, Pair, pad, sigmoid
from .templates import PairTemplate, PromptTemplate, encode_pairs, qwen3_template, rust_tokenizer

__all__ = ["SequenceClassificationReranker", "load_sequence_classifier", "window_limit"]

# Position tables of RoBERTa-style models start after the padding index.
_POSITION_OFFSET_MODELS = {"roberta", "xlm-roberta", "camembert", "xlm-roberta-xl", "longformer"}


def window_limit(config: Any, hf_tokenizer: Any, requested: int) -> int:
    """Most tokens per pair: the setting, capped by the model's positions and the tokenizer's limit."""
    limit = int(getattr(config, "max_position_embeddings", requested) or requested)
    if config.model_type in _POSITION_OFFSET_MODELS:
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


class SequenceClassificationReranker:
    """A loaded ``*ForSequenceClassification`` model and the template that feeds it."""

    backend = "torch"

    def __init__(self, model: Any, hf_tokenizer: Any, *, name: str, family: str, max_length: int,
                 template: PairTemplate | PromptTemplate) -> None:
        self._model = model.eval()
        self.name = name
        self.family = family
        self.device = str(self._model.device)
        self.dtype_name = str(self._model.dtype).removeprefix("torch.")
        config = self._model.config
        self.num_labels = int(config.num_labels)
        if self.num_labels not in (1, 2):
            raise ValueError(f"{self.num_labels} labels: a reranker has one relevance logit (or two: no/yes)")
        self.template = template
        self.takes_instruction = isinstance(template, PromptTemplate)
        self._with_types = isinstance(template, PairTemplate) and template.with_types
        self._pad_id = pad_id_of(hf_tokenizer, config)
        if getattr(config, "pad_token_id", None) is None:
            # Decoder classifiers pool at the last non-padding token, which they find by this id.
            config.pad_token_id = self._pad_id
        self.max_length = window_limit(config, hf_tokenizer, max_length)

    def to(self, dtype: torch.dtype) -> SequenceClassificationReranker:
        self._model = self._model.to(dtype)
        self.dtype_name = str(dtype).removeprefix("torch.")
        return self

    def encode(self, query: str, documents: Sequence[str], options: EncodeOptions) -> list[Pair]:
        return encode_pairs(self.template, query, documents, options)

    def inputs(self, batch: Sequence[Pair]) -> dict[str, torch.Tensor]:
        """The padded model inputs of a batch (token types too, for models that have them)."""
        inputs = pad(batch, self._pad_id, side="right", device=self.device)
        if self._with_types:
            width = inputs["input_ids"].shape[1]
            types = [(p.type_ids or []) + [0] * (width - len(p)) for p in batch]
            inputs["token_type_ids"] = torch.tensor(types, dtype=torch.long, device=self.device)
        return inputs

    def raw_scores(self, logits: torch.Tensor) -> list[float]:
        """One raw score per pair from the classifier's logits (two labels: their difference)."""
        logits = logits.float()
        raw = logits[:, 0] if self.num_labels == 1 else logits[:, 1] - logits[:, 0]
        return raw.cpu().tolist()

    @torch.inference_mode()
    def forward(self, batch: Sequence[Pair]) -> list[float]:
        return self.raw_scores(self._model(**self.inputs(batch)).logits)

    def activate(self, raw: float) -> float:
        # One label: sigmoid(logit). Two labels: softmax(...)[1] == sigmoid(l1 - l0).
        return sigmoid(raw)


def load_sequence_classifier(source: str, *, family: str, name: str, max_length: int, device: str,
                             dtype: torch.dtype, cache_dir: str | None, offline: bool, trust_remote_code: bool,
                             instruction: str | None) -> SequenceClassificationReranker:
    # Imported here, not at module import: importing sentence-transformers costs seconds, and
    # tests and `--help` should not pay for it.
    from sentence_transformers import CrossEncoder

    cross_encoder = CrossEncoder(
        source,
        device=device,
        cache_folder=cache_dir,
        local_files_only=offline,
        trust_remote_code=trust_remote_code,
        max_length=max_length,
        model_kwargs={"dtype": dtype, "attn_implementation": "sdpa"},
    )
    hf_tokenizer = cross_encoder.tokenizer
    tokenizer = rust_tokenizer(hf_tokenizer)
    if family == "qwen3-seq-cls":
        template: PairTemplate | PromptTemplate = qwen3_template(tokenizer, instruction=instruction)
    else:
        template = PairTemplate(tokenizer, with_types="token_type_ids" in getattr(hf_tokenizer, "model_input_names", ()))
    return SequenceClassificationReranker(cross_encoder.model, hf_tokenizer, name=name, family=family,
                                          max_length=max_length, template=template)
