"""NVIDIA's llama-nemotron-rerank-1b-v2 (and the 500m pruned from it): a bidirectional Llama
cross-encoder, run natively (its ``llama_bidirectional_model.py`` is never imported).

What the published code computes (the model repo's ``llama_bidirectional_model.py``,
``LlamaBidirectionalForSequenceClassification``):

    hidden = LlamaModel(ids, mask)   every layer's ``is_causal = False`` and a padding-only 4D mask
    pooled = pool(hidden, mask, config.pooling)    "avg": the mean over the real tokens
    logit  = score(pooled) / config.temperature    ``score``: Linear(hidden, num_labels, bias=False)

and its model card (and vLLM's ``examples/pooling/score/template/nemotron-rerank.jinja``) feed it
one text per pair, ``question:{query} \\n \\n passage:{passage}``, tokenized whole with the
tokenizer's special tokens (Llama 3's ``<|begin_of_text|>``). The relevance score is
sigmoid(logit), as for every one-label cross-encoder here (``raw_scores`` gives the logit).

Natively, that is transformers' own ``LlamaForSequenceClassification`` modules (the weight names
are the same: ``model.*``, ``score.weight``) with ``config.is_causal = False`` (transformers'
masking then builds a bidirectional padding mask, for SDPA and eager alike) and each attention
layer's ``is_causal`` off (SDPA without a mask must not fall back to its causal kernel); only the
pooling and the temperature are this module's.
"""

from __future__ import annotations

from typing import Any

import torch
from loguru import logger
from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutput

from ..config import ModelSpec
from ..device import Placement
from ..errors import ModelLoadError
from ..families import Family
from .architectures import attn_implementation
from .base import EncodeOptions
from .choice import CHECK_DOCUMENTS, compare
from .encoder import SequenceClassificationReranker, feed_of, use_openvino
from .runners import PaddedRunner
from .templates import PromptTemplate, rust_tokenizer

__all__ = ["ARCHITECTURE", "BidirectionalLlamaClassifier", "load_nemotron", "nemotron_template", "pool"]

ARCHITECTURE = "LlamaBidirectionalForSequenceClassification"
# The model card's prompt_template(query, passage) (and vLLM's nemotron-rerank.jinja).
PROMPT = "question:{query} \n \n passage:{doc}"
POOLINGS = ("avg", "weighted_avg", "cls", "last")
# Keys of LlamaBidirectionalConfig that LlamaConfig does not have (read here, not passed on).
_OWN_KEYS = ("pooling", "temperature", "auto_map", "model_type", "architectures", "transformers_version")


def pool(hidden: torch.Tensor, mask: torch.Tensor, pool_type: str) -> torch.Tensor:
    """The published ``pool()``, for right-padded batches (the only padding this server sends)."""
    hidden = hidden.masked_fill(~mask[..., None].bool(), 0.0)
    if pool_type == "avg":
        return hidden.sum(dim=1) / mask.sum(dim=1)[..., None]
    if pool_type == "weighted_avg":  # (the published code's name for a plain sum)
        return hidden.sum(dim=1)
    if pool_type == "cls":
        return hidden[:, 0]
    # "last": right padding, so each pair's last real token.
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), mask.sum(dim=1) - 1]


class BidirectionalLlamaClassifier(nn.Module):
    """transformers' Llama classifier modules, attention bidirectional, pooled as the model's config says."""

    def __init__(self, classifier: Any, *, pooling: str, temperature: float) -> None:
        super().__init__()
        self.classifier = classifier  # LlamaForSequenceClassification: .model (LlamaModel) and .score
        self.pooling = pooling
        self.temperature = temperature

    @property
    def config(self) -> Any:
        return self.classifier.config

    @property
    def device(self) -> torch.device:
        return self.classifier.device

    @property
    def dtype(self) -> torch.dtype:
        return self.classifier.dtype

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **_: Any) -> SequenceClassifierOutput:
        # No key/value cache: nothing is generated, and its concatenations do not convert to OpenVINO.
        hidden = self.classifier.model(input_ids=input_ids, attention_mask=attention_mask,
                                       use_cache=False).last_hidden_state
        logits = self.classifier.score(pool(hidden, attention_mask, self.pooling)) / self.temperature
        return SequenceClassifierOutput(logits=logits)


def _special_around(tokenizer: Any) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The special tokens the tokenizer puts before and after one text (Llama 3: the BOS, nothing after)."""
    plain = tokenizer.encode("x", add_special_tokens=False).ids
    full = tokenizer.encode("x", add_special_tokens=True).ids
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return tuple(full[:start]), tuple(full[start + len(plain) :])
    return (), ()


def nemotron_template(tokenizer: Any) -> PromptTemplate:
    """One text per pair, tokenized whole, between the tokenizer's own special tokens."""
    before, after = _special_around(tokenizer)
    segments: list[Any] = ([before] if before else []) + [PROMPT] + ([after] if after else [])
    return PromptTemplate(tokenizer, segments, default_instruction="")


def _malformed(spec: ModelSpec, why: str) -> ModelLoadError:
    return ModelLoadError(f"cannot load {spec.describe()} as a nemotron-rerank reranker "
                          f"({ARCHITECTURE}, llama-nemotron-rerank-1b-v2): {why}")


def _llama_config(spec: ModelSpec, raw: dict[str, Any]) -> tuple[Any, str, float]:
    from transformers import LlamaConfig

    pooling = str(raw.get("pooling", "avg"))  # LlamaBidirectionalConfig's default
    if pooling not in POOLINGS:
        raise _malformed(spec, f"config.json pooling {pooling!r} is none of the published code's {', '.join(POOLINGS)}")
    temperature = float(raw.get("temperature", 1.0))
    if not temperature > 0:
        raise _malformed(spec, f"config.json temperature {temperature!r} must be positive")
    missing = [k for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size") if k not in raw]
    if missing:
        raise _malformed(spec, f"config.json has no {', '.join(missing)}")
    config = LlamaConfig(**{k: v for k, v in raw.items() if k not in _OWN_KEYS})
    config.architectures = ["LlamaForSequenceClassification"]
    # transformers' masking builds a bidirectional (padding-only) mask for a non-causal config.
    config.is_causal = False
    return config, pooling, temperature


def _check_bidirectional(model: BidirectionalLlamaClassifier, reranker: SequenceClassificationReranker,
                         name: str) -> None:
    """Start-up self-check: attention sees the whole pair, and a padded batch scores each pair as alone.

    A transformers release that ignored ``is_causal`` would score every pair as a causal model
    without any error; the published model is bidirectional, so that must stop the start.
    """
    pairs = reranker.encode("which path scores pairs exactly", CHECK_DOCUMENTS, EncodeOptions(max_length=reranker.max_length))
    ids = torch.tensor([pairs[1].ids], device=model.device)
    changed = ids.clone()
    changed[0, -1] = pairs[0].ids[1] if ids[0, -1] != pairs[0].ids[1] else pairs[0].ids[2]
    with torch.inference_mode():
        mask = torch.ones_like(ids)
        first = [model.classifier.model(input_ids=x, attention_mask=mask, use_cache=False).last_hidden_state[0, 0]
                 for x in (ids, changed)]
    if torch.equal(first[0], first[1]):
        raise ModelLoadError(f"{name}: the start-up self-check found the attention causal (the first token does not "
                             "see the last); nemotron-rerank is bidirectional: this transformers release does not "
                             "honour is_causal=False")
    runner = reranker.runner

    def alone() -> torch.Tensor:
        return torch.cat([runner.logits([p]) for p in pairs])

    failure = compare(alone, lambda: runner.logits(pairs), dtype=model.dtype, device=str(model.device),
                      against="each pair scored alone")
    if failure is not None:
        raise ModelLoadError(f"{name}: the start-up self-check of padded batches failed: {failure}")
    logger.info("{}: bidirectional attention and padded batches passed the start-up self-check", name)


def load_nemotron(spec: ModelSpec, *, family: Family, placement: Placement, backend: str) -> SequenceClassificationReranker:
    from transformers import AutoTokenizer, LlamaForSequenceClassification, PretrainedConfig

    where = {"cache_dir": None if spec.local else str(spec.cache_dir), "local_files_only": spec.offline}
    raw, _ = PretrainedConfig.get_config_dict(spec.source, **where)
    if ARCHITECTURE not in (raw.get("architectures") or []):
        raise _malformed(spec, f"config.json's architectures are {raw.get('architectures')}, not [{ARCHITECTURE!r}]")
    config, pooling, temperature = _llama_config(spec, raw)
    # OpenVINO converts from float32 weights and compiles them in the placement's precision.
    dtype = torch.float32 if backend == "openvino" else placement.dtype
    implementation, _ = attn_implementation(spec, auto_class="AutoModelForSequenceClassification", config=config)
    try:
        classifier, info = LlamaForSequenceClassification.from_pretrained(
            spec.source, config=config, dtype=dtype, output_loading_info=True,
            attn_implementation=implementation or "sdpa", **where)
    except OSError as exc:
        raise _malformed(spec, str(exc).splitlines()[0]) from exc
    # Published weights cover every parameter: one left at its random initialisation scores noise.
    missing = [k for k in info["missing_keys"] if not k.endswith("rotary_emb.inv_freq")]
    if missing or info["unexpected_keys"] or info.get("mismatched_keys"):
        what = (f"missing {missing[:4]}" if missing else
                f"unexpected {list(info['unexpected_keys'])[:4]}" if info["unexpected_keys"] else
                f"mismatched shapes {list(info['mismatched_keys'])[:4]}")
        raise _malformed(spec, f"its weights are not the published layout (model.*, score.weight): {what}")
    for layer in classifier.model.layers:
        layer.self_attn.is_causal = False
    model = BidirectionalLlamaClassifier(classifier.to(placement.device).eval(), pooling=pooling,
                                         temperature=temperature)
    # trust_remote_code=False said outright: else transformers, seeing auto_map, asks on stdin.
    hf_tokenizer = AutoTokenizer.from_pretrained(spec.source, trust_remote_code=False, **where)
    template = nemotron_template(rust_tokenizer(hf_tokenizer))
    feed = feed_of(model, hf_tokenizer, template)
    reranker = SequenceClassificationReranker(PaddedRunner(model, feed), model.config, hf_tokenizer, name=spec.name,
                                              family=family.name, max_length=spec.max_length, template=template)
    reranker.takes_instruction = False  # its prompt has no instruction
    _check_bidirectional(model, reranker, spec.name)
    if backend == "openvino":
        use_openvino(reranker, model, feed, spec=spec, dtype=placement.dtype)
    return reranker

