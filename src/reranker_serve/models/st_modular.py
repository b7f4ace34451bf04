"""Modular sentence-transformers CrossEncoders (ettin-reranker, 2026): a bare encoder
(``config.json``: ``ModernBertModel``, ``BertModel``, ...) followed by the sentence-transformers
modules ``modules.json`` lists, the last of which writes ``scores``::

    Transformer(feature-extraction) -> Pooling(cls) -> Dense(GELU) -> LayerNorm -> Dense(1, Identity)

Whatever ``CrossEncoder.predict`` computes for such a checkpoint is computed here, by the same
modules: sentence-transformers (a kept library, already what loads every cross-encoder) builds
the stack from ``modules.json``, and the forward pass is its own ``CrossEncoder.forward`` over the
batch this server tokenized. What ``predict`` adds around it is read from the loaded model, not
re-derived: the default prompt (``config_sentence_transformers.json``'s ``default_prompt_name``,
prepended to the query text as ``prepend_prompt_to_texts`` does) and the activation
(``activation_fn``: Sigmoid, Identity, ...), applied in ``activate``. A start-up self-check scores
a batch both ways, here and with ``CrossEncoder.predict`` itself, and the start stops if they differ.
"""

from __future__ import annotations

import json
from typing import Any, Sequence

import torch
from loguru import logger
from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutput

from ..config import ModelSpec
from ..device import Placement
from ..errors import ModelLoadError
from ..families import Family
from .architectures import attn_implementation
from .base import EncodeOptions, sigmoid
from .choice import CHECK_DOCUMENTS, compare
from .encoder import SequenceClassificationReranker, feed_of, use_openvino
from .runners import PaddedRunner, Runner
from .templates import Layout, PairTemplate, rust_tokenizer

__all__ = ["ModularCrossEncoder", "ModularReranker", "PromptedPairTemplate", "load_st_modular"]

FAMILY_HINT = "st-crossencoder (a modular sentence-transformers CrossEncoder, e.g. ettin-reranker)"


class ModularCrossEncoder(nn.Module):
    """A loaded CrossEncoder's module stack called on padded ids: its ``scores`` are the logits."""

    def __init__(self, cross_encoder: Any) -> None:
        super().__init__()
        self.cross_encoder = cross_encoder

    @property
    def transformer(self) -> Any:
        return self.cross_encoder[0].model

    @property
    def config(self) -> Any:
        return self.transformer.config

    @property
    def device(self) -> torch.device:
        return self.transformer.device

    @property
    def dtype(self) -> torch.dtype:
        return self.transformer.dtype

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> SequenceClassifierOutput:
        features = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            features["token_type_ids"] = token_type_ids
        return SequenceClassifierOutput(logits=self.cross_encoder(features)["scores"])


class PromptedPairTemplate(PairTemplate):
    """The tokenizer's pair template, the query text after the checkpoint's default prompt."""

    def __init__(self, tokenizer: Any, *, with_types: bool, prompt: str) -> None:
        super().__init__(tokenizer, with_types=with_types)
        self.prompt = prompt

    def layouts(self, query: str, documents: Sequence[str], instruction: str | None) -> list[Layout]:
        return super().layouts(self.prompt + query, documents, instruction)


class ModularReranker(SequenceClassificationReranker):
    """One score per pair (the last Dense's one output), activated by the checkpoint's ``activation_fn``."""

    def __init__(self, runner: Runner, cross_encoder: Any, hf_tokenizer: Any, *, name: str, family: str,
                 max_length: int, template: PairTemplate) -> None:
        super().__init__(runner, cross_encoder[0].model.config, hf_tokenizer, name=name, family=family,
                         max_length=max_length, template=template)
        self.num_labels = 1
        self.activation_fn = cross_encoder.activation_fn
        self.activation = type(self.activation_fn).__name__

    def activate(self, raw: float) -> float:
        if isinstance(self.activation_fn, nn.Sigmoid):
            return sigmoid(raw)
        if isinstance(self.activation_fn, nn.Identity):
            return raw
        with torch.inference_mode():  # Tanh, a custom module: the checkpoint's own object
            return float(self.activation_fn(torch.tensor([raw], dtype=torch.float32))[0])


def _malformed(spec: ModelSpec, why: str) -> ModelLoadError:
    return ModelLoadError(f"cannot load {spec.describe()} as a {FAMILY_HINT}: {why}")


def _st_file(spec: ModelSpec, name: str) -> dict[str, Any] | list[Any] | None:
    from transformers.utils import cached_file

    path = cached_file(spec.source, name, cache_dir=None if spec.local else str(spec.cache_dir),
                       local_files_only=spec.offline, _raise_exceptions_for_missing_entries=False)
    if path is None:
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)  # type: ignore[no-any-return]


def _check_layout(spec: ModelSpec) -> None:
    """modules.json and config_sentence_transformers.json say a CrossEncoder, before anything loads.

    Without modules.json, sentence-transformers would put a freshly initialised classification
    head on the bare encoder and score noise: that is a refusal, not a load.
    """
    modules = _st_file(spec, "modules.json")
    if not isinstance(modules, list) or not modules:
        raise _malformed(spec, "its config.json names a bare encoder with no head, and it has no modules.json "
                               "listing the sentence-transformers modules that score")
    st_config = _st_file(spec, "config_sentence_transformers.json") or {}
    kind = st_config.get("model_type", "SentenceTransformer") if isinstance(st_config, dict) else "?"
    if kind != "CrossEncoder":
        raise _malformed(spec, f"config_sentence_transformers.json says model_type {kind!r}: an embedding model, "
                               "not a CrossEncoder (a reranker scores a query and a document together)")


def _prompt(cross_encoder: Any, spec: ModelSpec) -> str:
    """The prompt ``predict`` prepends by default ("" if none), refused where it changes the pooling."""
    prompt = cross_encoder._resolve_prompt(None, None) or ""
    if prompt and any(getattr(m, "include_prompt", True) is False for m in cross_encoder):
        raise _malformed(spec, "a default prompt with a Pooling module that excludes the prompt tokens "
                               "(include_prompt: false) is not supported")
    return prompt


def _self_check(reranker: ModularReranker, cross_encoder: Any, name: str) -> None:
    """Start-up self-check: this server's batch scores what ``CrossEncoder.predict`` scores."""
    query = "which path scores pairs exactly"
    options = EncodeOptions(max_length=reranker.max_length)
    docs = [d for d in CHECK_DOCUMENTS if len(reranker.encode(query, [d], options)[0]) < reranker.max_length]
    pairs = reranker.encode(query, docs, options)

    def ours() -> torch.Tensor:
        return torch.tensor([reranker.activate(r) for r in reranker.forward(pairs)])

    def published() -> torch.Tensor:
        return torch.as_tensor(cross_encoder.predict([(query, d) for d in docs], batch_size=len(docs),
                                                     show_progress_bar=False, convert_to_tensor=True)).float().cpu()

    failure = compare(published, ours, dtype=reranker.runner.dtype, device="cpu", against="CrossEncoder.predict")
    if failure is not None:
        raise ModelLoadError(f"{name}: the start-up self-check against sentence-transformers' CrossEncoder.predict "
                             f"failed: {failure}")
    logger.info("{}: modular CrossEncoder ({}; activation {}) agreed with CrossEncoder.predict at start-up", name,
                " -> ".join(type(m).__name__ for m in cross_encoder), reranker.activation)


def load_st_modular(spec: ModelSpec, *, family: Family, placement: Placement, backend: str) -> ModularReranker:
    from sentence_transformers import CrossEncoder

    _check_layout(spec)
    # OpenVINO converts from float32 weights and compiles them in the placement's precision.
    dtype = torch.float32 if backend == "openvino" else placement.dtype
    implementation, _ = attn_implementation(spec, auto_class="AutoModel")
    model_kwargs: dict[str, Any] = {"dtype": dtype}
    if implementation is not None:
        model_kwargs["attn_implementation"] = implementation
    cross_encoder = CrossEncoder(spec.source, device=placement.device,
                                 cache_folder=None if spec.local else str(spec.cache_dir),
                                 local_files_only=spec.offline, trust_remote_code=spec.trust_remote_code,
                                 model_kwargs=model_kwargs)
    if cross_encoder.num_labels != 1:
        raise _malformed(spec, f"its last module writes {cross_encoder.num_labels} scores per pair: a classifier, "
                               "not a reranker (one relevance score)")
    model = ModularCrossEncoder(cross_encoder).eval()
    hf_tokenizer = cross_encoder.tokenizer
    template = PromptedPairTemplate(rust_tokenizer(hf_tokenizer), prompt=_prompt(cross_encoder, spec),
                                    with_types="token_type_ids" in getattr(hf_tokenizer, "model_input_names", ()))
    feed = feed_of(model, hf_tokenizer, template)
    # The checkpoint's own max_seq_length caps the window, as it caps predict's truncation.
    max_length = min(spec.max_length, int(cross_encoder.max_seq_length or spec.max_length))
    reranker = ModularReranker(PaddedRunner(model, feed), cross_encoder, hf_tokenizer, name=spec.name,
                               family=family.name, max_length=max_length, template=template)
    _self_check(reranker, cross_encoder, spec.name)
    if backend == "openvino":
        use_openvino(reranker, model, feed, spec=spec, dtype=placement.dtype)
    return reranker
