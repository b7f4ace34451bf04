"""Model families: one record per family, asked by everything that treats families differently.

    family         what it is                                   detected by
    encoder        bge-reranker-v2-m3/-large/-base, any         *ForSequenceClassification
                   one-label sequence classifier
    qwen3-seq-cls  Qwen3-Reranker converted to a classifier     *ForSequenceClassification, model_type qwen3
    qwen3          Qwen3-Reranker 0.6B/4B/8B (causal LM)        *ForCausalLM, model_type qwen3
    llm            bge-reranker-v2-gemma (FlagLLMReranker)      *ForCausalLM, model_type gemma
    layerwise      bge-reranker-v2-minicpm-layerwise            LayerWiseMiniCPMForCausalLM (remote code)
    lightweight    bge-reranker-v2.5-gemma2-lightweight         CostWiseGemmaForCausalLM (remote code)

The loader (device placement, precision, detection, settings, /info) asks the record; a new
family is one entry here and the module its ``loader`` names. This module imports nothing
heavy (settings validation reads the family names from it).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable

__all__ = ["FAMILIES", "FAMILY_NAMES", "Family", "UnknownModel", "detect", "family"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Family:
    name: str
    description: str
    # Whether it is a decoder (trained in bf16: fp16 overflows; prompt templates, causal attention).
    decoder: bool
    # Whether it runs Python code shipped with the model (needs RERANKER_TRUST_REMOTE_CODE).
    remote_code: bool = False
    # "module:function" that loads it: (spec, family=, placement=, backend=) -> ScoringModel.
    loader: str
    # Forward passes that can run it besides torch's padded one.
    openvino: bool = False  # OpenVINO on the CPU
    unpadded: bool = False  # packed tokens with per-pair variable-length attention (RERANKER_ATTENTION)
    shares_prefix: bool = False  # a request's prompt prefix computed once, its keys/values reused
    compresses: bool = False  # token compression of the passage (needs right padding)
    # Whether it is this family, from config.json's architectures and model_type.
    detect: Callable[[list[str], str], bool]

    def load(self, *args: Any, **kwargs: Any) -> Any:
        module, _, function = self.loader.partition(":")
        return getattr(importlib.import_module(module), function)(*args, **kwargs)


def _classifier(architectures: list[str]) -> bool:
    return any(a.endswith("ForSequenceClassification") for a in architectures)


def _causal(architectures: list[str]) -> bool:
    return any(a.endswith("ForCausalLM") for a in architectures)


_MODELS = "reranker_serve.models"

# In detection order: the first that matches wins (the remote-code architectures end in
# ForCausalLM too, so they come first).
FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family(name="layerwise", description="bge-reranker-v2-minicpm-layerwise", decoder=True, remote_code=True,
           loader=f"{_MODELS}.layerwise:load_layerwise",
           detect=lambda archs, mt: "LayerWiseMiniCPMForCausalLM" in archs),
    Family(name="lightweight", description="bge-reranker-v2.5-gemma2-lightweight", decoder=True, remote_code=True,
           compresses=True, loader=f"{_MODELS}.layerwise:load_layerwise",
           detect=lambda archs, mt: "CostWiseGemmaForCausalLM" in archs or mt == "cost_wise_gemma"),
    Family(name="qwen3-seq-cls", description="Qwen3-Reranker converted to a sequence classifier", decoder=True,
           loader=f"{_MODELS}.encoder:load_sequence_classifier",
           detect=lambda archs, mt: _classifier(archs) and mt.startswith("qwen3")),
    Family(name="encoder", description="cross-encoder (bge-reranker-v2-m3/-large/-base, any sequence classifier)",
           decoder=False, openvino=True, unpadded=True, loader=f"{_MODELS}.encoder:load_sequence_classifier",
           detect=lambda archs, mt: _classifier(archs)),
    Family(name="qwen3", description="Qwen3-Reranker (causal LM, yes/no)", decoder=True, shares_prefix=True,
           unpadded=True, loader=f"{_MODELS}.causal:load_causal_lm",
           detect=lambda archs, mt: _causal(archs) and mt.startswith("qwen3")),
    Family(name="llm", description="bge-reranker-v2-gemma (causal LM, FlagEmbedding's 'Yes' prompt)", decoder=True,
           shares_prefix=True, unpadded=True, loader=f"{_MODELS}.causal:load_causal_lm",
           detect=lambda archs, mt: _causal(archs) and mt == "gemma"),
)}
FAMILY_NAMES: tuple[str, ...] = tuple(FAMILIES)


class UnknownModel(ValueError):
    """config.json describes no family this server can score."""


def family(name: str) -> Family:
    return FAMILIES[name]


def detect(config: dict[str, Any], requested: str = "auto") -> Family:
    """The family of a model from its config.json (``requested`` wins unless it is "auto")."""
    if requested != "auto":
        return FAMILIES[requested]
    architectures = list(config.get("architectures") or [])
    model_type = str(config.get("model_type") or "")
    for candidate in FAMILIES.values():
        if candidate.detect(architectures, model_type):
            return candidate
    if _causal(architectures):
        # A causal LM is a reranker only if it was trained as one: say how to declare it.
        raise UnknownModel(
            f"a causal language model (architectures={architectures}, model_type={model_type!r}) is not a known "
            "reranker; if it was trained as one, set RERANKER_MODEL_TYPE=llm (FlagEmbedding's 'Yes' prompt) or "
            "qwen3 (Qwen3-Reranker's yes/no prompt)"
        )
    raise UnknownModel(
        f"not a supported reranker: architectures={architectures or 'none'}, model_type={model_type!r}; "
        "supported: *ForSequenceClassification cross-encoders, Qwen3-Reranker, bge-reranker-v2-gemma, "
        "bge-reranker-v2-minicpm-layerwise, bge-reranker-v2.5-gemma2-lightweight"
    )
