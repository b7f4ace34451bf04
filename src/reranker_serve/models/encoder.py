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

from typing import Any, Callable, Sequence

import torch
from loguru import logger

from .. import device as cpu_capability
from ..config import ModelSpec
from ..device import Placement
from ..errors import ModelLoadError
from ..families import Family
from .architectures import attn_implementation
from .attention import Kernel, torch_varlen_available
from .choice import CHECK_DOCUMENTS, compare, plan_attention, report_unpadded_check
from .base import EncodeOptions, Pair, Pending, sigmoid
from .hf import pad_id_of, window_limit
from .openvino import to_openvino
from .quantize import nncf_available, plan_quantization, quantize_model
from .runners import POSITION_OFFSET_MODELS, Feed, PaddedRunner, Runner, UnpaddedRunner, unpadded_head
from .templates import PairTemplate, PromptTemplate, encode_pairs, qwen3_template, rust_tokenizer

__all__ = [
    "ClassifierTemplate", "SequenceClassificationReranker", "apply_attention", "choose_attention",
    "load_sequence_classifier", "pair_template", "qwen3_classifier_template", "use_int8", "use_openvino",
]


def feed_of(model: Any, hf_tokenizer: Any, template: PairTemplate | PromptTemplate) -> Feed:
    config = model.config
    pad_id = pad_id_of(hf_tokenizer, config)
    if getattr(config, "pad_token_id", None) is None:
        # Decoder classifiers pool at the last non-padding token, which they find by this id.
        config.pad_token_id = pad_id
    offset = int(config.pad_token_id) if config.model_type in POSITION_OFFSET_MODELS else None
    return Feed(pad_id, isinstance(template, PairTemplate) and template.with_types, position_padding_idx=offset)


class SequenceClassificationReranker:
    """A ``*ForSequenceClassification`` model's template and labels, and the runner that computes it."""

    def __init__(self, runner: Runner, config: Any, hf_tokenizer: Any, *, name: str, family: str, max_length: int,
                 template: PairTemplate | PromptTemplate) -> None:
        self.runner = runner
        self.name = name
        self.family = family
        self.num_labels = int(config.num_labels)
        if self.num_labels not in (1, 2):
            raise ValueError(f"{self.num_labels} labels: a reranker has one relevance logit (or two: no/yes)")
        self.template = template
        self.takes_instruction = isinstance(template, PromptTemplate)
        self.max_length = window_limit(config, hf_tokenizer, max_length)
        self.attention_note = ""  # why this attention path (start-up self-check, setting, device)
        self.backend_note = ""  # why this backend (OpenVINO's start-up check against torch)
        self.attn_implementation = str(config._attn_implementation)  # transformers' (sdpa, eager)
        self.quantization: dict[str, object] | None = None  # int8 (use_int8), as /info shows it

    @property
    def runner(self) -> Runner:
        return self._runner

    @runner.setter
    def runner(self, runner: Runner) -> None:
        # What runs it, as /info and the batcher see it: the runner's, copied when it changes.
        self._runner = runner
        self.backend, self.attention, self.padded = runner.backend, runner.attention, runner.padded
        self.asynchronous = runner.asynchronous
        self.device, self.dtype_name = runner.device, runner.dtype_name

    def encode(self, query: str, documents: Sequence[str], options: EncodeOptions) -> list[Pair]:
        return encode_pairs(self.template, query, documents, options)

    def raw_scores(self, logits: torch.Tensor) -> torch.Tensor:
        """One raw score per pair from the classifier's logits (two labels: their difference)."""
        logits = logits.float()
        return logits[:, 0] if self.num_labels == 1 else logits[:, 1] - logits[:, 0]

    @torch.inference_mode()
    def launch(self, batch: Sequence[Pair]) -> Pending:
        if self.asynchronous:
            logits = self.runner.start(batch)
            return Pending.later(lambda: self.raw_scores(logits()))
        return Pending(self.raw_scores(self.runner.logits(batch)))

    def forward(self, batch: Sequence[Pair]) -> list[float]:
        return self.launch(batch).result()

    def activate(self, raw: float) -> float:
        # One label: sigmoid(logit). Two labels: softmax(...)[1] == sigmoid(l1 - l0).
        return sigmoid(raw)


def apply_attention(reranker: SequenceClassificationReranker, model: Any, feed: Feed, *, kernel: Kernel,
                    required: bool) -> None:
    """Serve unpadded with ``kernel`` if it passes the self-check; else padded (or, if required, fail)."""
    candidate = UnpaddedRunner(model, feed, kernel=kernel)
    padded = PaddedRunner(model, feed)
    pairs = reranker.encode("which path scores pairs exactly", CHECK_DOCUMENTS,
                            EncodeOptions(max_length=reranker.max_length))
    failure = compare(lambda: padded.logits(pairs), lambda: candidate.logits(pairs), dtype=model.dtype,
                      device=candidate.device)
    reranker.attention_note = report_unpadded_check(reranker.name, kernel, failure, required=required)
    if failure is None:
        reranker.runner = candidate


def choose_attention(reranker: SequenceClassificationReranker, model: Any, feed: Feed, *, setting: str) -> None:
    """RERANKER_ATTENTION for a torch reranker: plan, then prove the unpadded path before it serves."""
    found = unpadded_head(model)
    kernel, why = plan_attention(setting, device=str(model.device), dtype=model.dtype,
                                 supported=found if isinstance(found, str) else None,
                                 varlen_available=torch_varlen_available())
    if kernel is None:
        reranker.attention_note = why
        if setting == "auto" and str(model.device).startswith("cuda"):
            logger.info("{}: serving padded attention ({})", reranker.name, why)
        return
    apply_attention(reranker, model, feed, kernel=kernel, required=setting == "unpadded")


def use_openvino(reranker: SequenceClassificationReranker, model: Any, feed: Feed, *, spec: ModelSpec,
                 dtype: torch.dtype) -> None:
    """Give ``reranker`` an OpenVINO runner if it scores the start-up check batch as torch does.

    The check batch holds pairs of very different lengths (padding longer than a local-attention
    window included), computed by torch in float32 and by the converted model in ``dtype``;
    they must agree within ``dtype``'s tolerance. A model that does not convert or does not agree
    serves on torch, and the log and /info (``backend_note``) say why; with
    RERANKER_BACKEND=openvino the start fails instead.
    """
    try:
        candidate = to_openvino(model, feed, dtype=dtype, threads=torch.get_num_threads(), name=spec.name)
    except Exception as exc:
        if spec.backend == "openvino":
            raise
        failure = f"it could not convert the model ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
    else:
        pairs = reranker.encode("which backend scores pairs exactly", CHECK_DOCUMENTS,
                                EncodeOptions(max_length=reranker.max_length))
        exact = PaddedRunner(model, feed)
        failure = compare(lambda: exact.logits(pairs), lambda: candidate.logits(pairs), dtype=dtype, device="cpu",
                          against="torch (float32)")
        if failure is None:
            reranker.runner = candidate
            reranker.attention_note = "padded (OpenVINO)"
            reranker.backend_note = "openvino: its start-up check agreed with torch"
            return
        failure = f"its start-up check failed: {failure}"
        if spec.backend == "openvino":
            raise ModelLoadError(f"RERANKER_BACKEND=openvino: {spec.name}: {failure}; use RERANKER_BACKEND=torch or auto")
    # auto: a model OpenVINO cannot run exactly still serves, through torch.
    logger.warning("OpenVINO: {} for {}; serving it with torch", failure, spec.name)
    reranker.backend_note = f"torch: OpenVINO {failure}"
    reranker.runner = PaddedRunner(model.to(dtype), feed)


def use_int8(reranker: SequenceClassificationReranker, model: Any, feed: Feed, *, spec: ModelSpec,
             dtype: torch.dtype) -> None:
    """RERANKER_QUANTIZE: give ``reranker`` an int8 OpenVINO runner if one passes its start-up
    self-check against torch float32 (models/quantize.py); else it keeps the runner it has."""
    plan = plan_quantization(spec.quantize, dtype_setting=spec.dtype, dtype=dtype, device=reranker.device,
                             openvino=reranker.backend == "openvino", nncf=nncf_available,
                             bf16_hardware=lambda: cpu_capability.cpu_has_fast_bf16())  # read at call: tests inject it
    runner, report = quantize_model(
        model=model, feed=feed, encode=lambda query, docs: reranker.encode(query, docs, EncodeOptions(
            max_length=reranker.max_length)), raw_scores=reranker.raw_scores, plan=plan, setting=spec.quantize,
        dtype=dtype, threads=torch.get_num_threads(), cache_dir=spec.cache_dir, name=spec.name,
        calibration=spec.quantize_calibration,
    )
    reranker.quantization = report.as_info()
    if runner is not None:
        reranker.runner = runner


# How a classifier family lays out its input: (the tokenizer, the fast tokenizer, the spec) → its template.
ClassifierTemplate = Callable[[Any, Any, ModelSpec], PairTemplate | PromptTemplate]


def pair_template(hf_tokenizer: Any, tokenizer: Any, spec: ModelSpec) -> PairTemplate:
    """A cross-encoder's (query, document) pair, with token type ids where its tokenizer makes them."""
    return PairTemplate(tokenizer, with_types="token_type_ids" in getattr(hf_tokenizer, "model_input_names", ()))


def qwen3_classifier_template(hf_tokenizer: Any, tokenizer: Any, spec: ModelSpec) -> PromptTemplate:
    """Qwen3-Reranker converted to a classifier: still fed Qwen3's prompt."""
    return qwen3_template(tokenizer, instruction=spec.instruction)


def load_sequence_classifier(spec: ModelSpec, *, family: Family, placement: Placement, backend: str,
                             classifier_template: ClassifierTemplate) -> SequenceClassificationReranker:
    # Imported here, not at module import: importing sentence-transformers costs seconds, and
    # tests and `--help` should not pay for it.
    from sentence_transformers import CrossEncoder

    # OpenVINO converts from float32 weights and compiles them in the placement's precision.
    dtype = torch.float32 if backend == "openvino" else placement.dtype
    implementation, _ = attn_implementation(spec, auto_class="AutoModelForSequenceClassification")
    model_kwargs: dict[str, Any] = {"dtype": dtype}
    if implementation is not None:
        model_kwargs["attn_implementation"] = implementation
    cross_encoder = CrossEncoder(
        spec.source,
        device=placement.device,
        cache_folder=None if spec.local else str(spec.cache_dir),
        local_files_only=spec.offline,
        trust_remote_code=spec.trust_remote_code,
        max_length=spec.max_length,
        model_kwargs=model_kwargs,
    )
    hf_tokenizer = cross_encoder.tokenizer
    tokenizer = rust_tokenizer(hf_tokenizer)
    template = classifier_template(hf_tokenizer, tokenizer, spec)
    model = cross_encoder.model
    feed = feed_of(model, hf_tokenizer, template)
    reranker = SequenceClassificationReranker(PaddedRunner(model, feed), model.config, hf_tokenizer, name=spec.name,
                                              family=family.name, max_length=spec.max_length, template=template)
    if backend == "openvino":
        use_openvino(reranker, model, feed, spec=spec, dtype=placement.dtype)
    elif family.unpadded:
        choose_attention(reranker, model, feed, setting=spec.attention)
    use_int8(reranker, model, feed, spec=spec, dtype=placement.dtype)
    return reranker
