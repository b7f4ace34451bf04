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
from loguru import logger

from ..config import ModelSpec
from ..device import Placement
from ..errors import ModelLoadError
from ..families import Family
from .attention import Kernel, reference_kernel, torch_varlen_available, torch_varlen_kernel
from .base import EncodeOptions, Pair, Pending, sigmoid
from .runners import POSITION_OFFSET_MODELS, Feed, PaddedRunner, Runner, UnpaddedRunner, unpadded_head
from .templates import PairTemplate, PromptTemplate, encode_pairs, qwen3_template, rust_tokenizer

__all__ = [
    "SequenceClassificationReranker", "apply_attention", "choose_attention", "load_sequence_classifier", "plan_attention",
    "self_check", "window_limit",
]

# How far the unpadded logits may stray from the padded ones at start-up (atol = rtol): the two
# paths sum in different orders, which in half precision moves a logit by a few ulps per layer.
SELF_CHECK_TOLERANCE = {torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 8e-2}


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

    # What runs it, as /info shows it: the runner's.
    @property
    def backend(self) -> str:
        return self.runner.backend

    @property
    def attention(self) -> str:
        return self.runner.attention

    @property
    def padded(self) -> bool:
        return self.runner.padded

    @property
    def device(self) -> str:
        return self.runner.device

    @property
    def dtype_name(self) -> str:
        return self.runner.dtype_name

    def encode(self, query: str, documents: Sequence[str], options: EncodeOptions) -> list[Pair]:
        return encode_pairs(self.template, query, documents, options)

    def raw_scores(self, logits: torch.Tensor) -> torch.Tensor:
        """One raw score per pair from the classifier's logits (two labels: their difference)."""
        logits = logits.float()
        return logits[:, 0] if self.num_labels == 1 else logits[:, 1] - logits[:, 0]

    @torch.inference_mode()
    def launch(self, batch: Sequence[Pair]) -> Pending:
        return Pending(self.raw_scores(self.runner.logits(batch)))

    def forward(self, batch: Sequence[Pair]) -> list[float]:
        return self.launch(batch).result()

    def activate(self, raw: float) -> float:
        # One label: sigmoid(logit). Two labels: softmax(...)[1] == sigmoid(l1 - l0).
        return sigmoid(raw)

    def check_pairs(self) -> list[Pair]:
        """Pairs of several lengths (short to the window) to score both ways at start-up."""
        words = "the engine checks its fast path against the padded one before it serves".split()
        docs = [" ".join(words * n)[: 40 * n] for n in (1, 3, 9, 27, 81)]
        options = EncodeOptions(max_length=self.max_length)
        return self.encode("which path scores pairs exactly", docs, options)


def self_check(reranker: SequenceClassificationReranker, candidate: Runner) -> str | None:
    """Score a warm-up batch padded and with ``candidate``; None if they agree, else why not."""
    pairs = reranker.check_pairs()
    reference = PaddedRunner(getattr(candidate, "model"), getattr(candidate, "feed"))
    try:
        with torch.inference_mode():
            expected = reference.logits(pairs).float()
            got = candidate.logits(pairs).float()
            if candidate.device.startswith("cuda"):
                torch.cuda.synchronize()
    except Exception as exc:  # a kernel that cannot run here (dtype, head size, GPU generation)
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'no detail'}"
    tolerance = SELF_CHECK_TOLERANCE.get(candidate.dtype, 1e-1)
    if got.shape != expected.shape or not torch.allclose(got, expected, atol=tolerance, rtol=tolerance):
        drift = (got - expected).abs().max().item() if got.shape == expected.shape else float("nan")
        return f"its logits differ from the padded path's by up to {drift:.3g} (tolerance {tolerance:g})"
    return None


def plan_attention(setting: str, *, device: str, dtype: torch.dtype, supported: str | None,
                   varlen_available: bool) -> tuple[Kernel | None, str]:
    """The unpadded kernel to try for a torch reranker (None: serve padded), and why.

    auto: unpadded on CUDA in fp16/bf16 where torch has variable-length kernels (the start-up
    self-check then has the last word); padded everywhere else: on the CPU the padded path with
    length-sorted batches is what measures best. unpadded: required, on the reference kernel
    where there is no varlen kernel. ``supported``: why the model has no unpadded path, if not.
    """
    if setting == "padded":
        return None, "RERANKER_ATTENTION=padded"
    fast = device.startswith("cuda") and varlen_available and dtype in (torch.float16, torch.bfloat16)
    if setting == "unpadded":
        if supported is not None:
            raise ModelLoadError(f"RERANKER_ATTENTION=unpadded: {supported}")
        return (torch_varlen_kernel if fast else reference_kernel), "RERANKER_ATTENTION=unpadded"
    if not device.startswith("cuda"):
        return None, f"padded on {device} (unpadded needs CUDA varlen kernels)"
    if supported is not None:
        return None, f"padded: {supported}"
    if not varlen_available:
        return None, "padded: this torch has no torch.nn.attention.varlen (PyTorch >= 2.10)"
    if not fast:
        return None, f"padded: the varlen (flash) kernels need fp16 or bf16, not {str(dtype).removeprefix('torch.')}"
    return torch_varlen_kernel, "auto on CUDA"


def apply_attention(reranker: SequenceClassificationReranker, model: Any, feed: Feed, *, kernel: Kernel,
                    required: bool) -> None:
    """Serve unpadded with ``kernel`` if it passes the self-check; else padded (or, if required, fail)."""
    candidate = UnpaddedRunner(model, feed, kernel=kernel)
    failure = self_check(reranker, candidate)
    if failure is None:
        reranker.runner = candidate
        reranker.attention_note = f"unpadded ({kernel.name} kernel), start-up self-check passed"
        logger.info("{}: unpadded attention ({} kernel); start-up self-check passed", reranker.name, kernel.name)
        return
    if required:
        raise ModelLoadError(f"RERANKER_ATTENTION=unpadded: the start-up self-check failed: {failure}")
    reranker.attention_note = f"padded: the unpadded self-check failed ({failure})"
    logger.warning("{}: unpadded attention failed its start-up self-check ({}); serving padded", reranker.name, failure)


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


def load_sequence_classifier(spec: ModelSpec, *, family: Family, placement: Placement,
                             backend: str) -> SequenceClassificationReranker:
    # Imported here, not at module import: importing sentence-transformers costs seconds, and
    # tests and `--help` should not pay for it.
    from sentence_transformers import CrossEncoder

    # OpenVINO converts from float32 weights and compiles them in the placement's precision.
    dtype = torch.float32 if backend == "openvino" else placement.dtype
    cross_encoder = CrossEncoder(
        spec.source,
        device=placement.device,
        cache_folder=None if spec.local else str(spec.cache_dir),
        local_files_only=spec.offline,
        trust_remote_code=spec.trust_remote_code,
        max_length=spec.max_length,
        model_kwargs={"dtype": dtype, "attn_implementation": "sdpa"},
    )
    hf_tokenizer = cross_encoder.tokenizer
    tokenizer = rust_tokenizer(hf_tokenizer)
    if family.name == "qwen3-seq-cls":
        template: PairTemplate | PromptTemplate = qwen3_template(tokenizer, instruction=spec.instruction)
    else:
        template = PairTemplate(tokenizer, with_types="token_type_ids" in getattr(hf_tokenizer, "model_input_names", ()))
    model = cross_encoder.model
    feed = feed_of(model, hf_tokenizer, template)
    reranker = SequenceClassificationReranker(PaddedRunner(model, feed), model.config, hf_tokenizer, name=spec.name,
                                              family=family.name, max_length=spec.max_length, template=template)
    if backend == "openvino":
        from .openvino import use_openvino

        use_openvino(reranker, model, feed, spec=spec, dtype=placement.dtype)
    elif family.unpadded:
        choose_attention(reranker, model, feed, setting=spec.attention)
    return reranker
