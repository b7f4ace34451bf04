"""Model families: one record per family, asked by everything that treats families differently.

    family         what it is                                   detected by
    encoder        bge-reranker-v2-m3/-large/-base, any         *ForSequenceClassification
                   one-label sequence classifier
    qwen3-seq-cls  Qwen3-Reranker converted to a classifier     *ForSequenceClassification, model_type qwen3
    qwen3          Qwen3-Reranker 0.6B/4B/8B (causal LM)        *ForCausalLM, model_type qwen3
    llm            bge-reranker-v2-gemma (FlagLLMReranker)      *ForCausalLM, model_type gemma
    mxbai-rerank-v2  mixedbread's mxbai-rerank-base/large-v2    Qwen2ForCausalLM named mxbai-rerank*
    qwen3-vl       Qwen3-VL-Reranker 2B/8B (images and text)    Qwen3VLForConditionalGeneration named qwen3-vl-reranker*
    jina-m0        jina-reranker-m0 (images and text)           JinaVLForRanking (native: its own code is not run)
    layerwise      bge-reranker-v2-minicpm-layerwise            LayerWiseMiniCPMForCausalLM (native, or its own code)
    lightweight    bge-reranker-v2.5-gemma2-lightweight         CostWiseGemmaForCausalLM (native, or its own code)
    nemotron-rerank  llama-nemotron-rerank-1b-v2 (and 500m)     LlamaBidirectionalForSequenceClassification (native)
    st-crossencoder  modular sentence-transformers CrossEncoder  a bare *Model (ModernBertModel, ...) + modules.json
                   (ettin-reranker)

The loader (device placement, precision, detection, settings, /info) asks the record; a new
family is one entry here and its loader in ``models/loader.py``'s ``LOADERS`` (a function
reference, bound there with what sets the family apart: the model modules import these
records, so the records cannot import them back). This module imports nothing heavy
(settings validation reads the family names from it).
"""

from __future__ import annotations

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
    # Forward passes that can run it besides torch's padded one.
    openvino: bool = False  # OpenVINO on the CPU
    unpadded: bool = False  # packed tokens with per-pair variable-length attention (RERANKER_ATTENTION)
    shares_prefix: bool = False  # a request's prompt prefix computed once, its keys/values reused
    compresses: bool = False  # token compression of the passage (needs right padding)
    # Whether this package implements the architecture itself (else transformers must know its
    # model_type, or the model's own code must run).
    native: bool = False
    # Whether it ranks images beside text (media.py, models/vision.py); the others refuse them.
    multimodal: bool = False
    # Whether it is this family, from config.json's architectures and model_type.
    detect: Callable[[list[str], str], bool]
    # Where the architecture is a general one (a Qwen2 chat model is no reranker), what the model's
    # hub id or folder name must hold for auto-detection (lower case); RERANKER_MODEL_TYPE names it
    # otherwise.
    named: tuple[str, ...] = ()
    # What to tell the owner of an unknown model of the same architecture (see ``detect``).
    declared_by: str = ""


def _classifier(architectures: list[str]) -> bool:
    return any(a.endswith("ForSequenceClassification") for a in architectures)


def _causal(architectures: list[str]) -> bool:
    return any(a.endswith("ForCausalLM") for a in architectures)


def _bare_encoder(architectures: list[str]) -> bool:
    # ModernBertModel, BertModel: no head of its own (GPT2LMHeadModel has one: it is a language model).
    return bool(architectures) and all(a.endswith("Model") and "Head" not in a and not a.endswith("PreTrainedModel")
                                       for a in architectures)


# In detection order: the first that matches wins (the remote-code architectures end in
# ForCausalLM too, so they come first).
FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family(name="layerwise", description="bge-reranker-v2-minicpm-layerwise", decoder=True, native=True,
           detect=lambda archs, mt: "LayerWiseMiniCPMForCausalLM" in archs),
    Family(name="lightweight", description="bge-reranker-v2.5-gemma2-lightweight", decoder=True, native=True,
           compresses=True,
           detect=lambda archs, mt: "CostWiseGemmaForCausalLM" in archs or mt == "cost_wise_gemma"),
    # Before "encoder": its architecture ends in ForSequenceClassification too.
    Family(name="nemotron-rerank", description="llama-nemotron-rerank-1b-v2 (bidirectional Llama, mean-pooled)",
           decoder=True, native=True, openvino=True,
           detect=lambda archs, mt: "LlamaBidirectionalForSequenceClassification" in archs or mt == "llama_bidirec"),
    Family(name="qwen3-seq-cls", description="Qwen3-Reranker converted to a sequence classifier", decoder=True,
           detect=lambda archs, mt: _classifier(archs) and mt.startswith("qwen3")),
    Family(name="encoder", description="cross-encoder (bge-reranker-v2-m3/-large/-base, any sequence classifier)",
           decoder=False, openvino=True, unpadded=True,
           detect=lambda archs, mt: _classifier(archs)),
    Family(name="qwen3", description="Qwen3-Reranker (causal LM, yes/no)", decoder=True, shares_prefix=True,
           unpadded=True,
           detect=lambda archs, mt: _causal(archs) and mt.startswith("qwen3")),
    Family(name="llm", description="bge-reranker-v2-gemma (causal LM, FlagEmbedding's 'Yes' prompt)", decoder=True,
           shares_prefix=True, unpadded=True,
           detect=lambda archs, mt: _causal(archs) and mt == "gemma"),
    Family(name="qwen3-vl", description="Qwen3-VL-Reranker (vision-language, yes/no; images and text)", decoder=True,
           multimodal=True,
           detect=lambda archs, mt: "Qwen3VLForConditionalGeneration" in archs, named=("qwen3-vl-reranker",),
           declared_by="Qwen3-VL-Reranker-2B / -8B (RERANKER_MODEL_TYPE=qwen3-vl)"),
    Family(name="jina-m0", description="jina-reranker-m0 (Qwen2-VL with a score head; images and text)", decoder=True,
           multimodal=True, native=True,
           detect=lambda archs, mt: "JinaVLForRanking" in archs),
    Family(name="mxbai-rerank-v2", description="mxbai-rerank-base/large-v2 (causal LM, mixedbread's 0/1 prompt)",
           decoder=True, shares_prefix=True, unpadded=True,
           detect=lambda archs, mt: "Qwen2ForCausalLM" in archs, named=("mxbai-rerank",),
           declared_by="mixedbread's mxbai-rerank-base-v2 / -large-v2 (RERANKER_MODEL_TYPE=mxbai-rerank-v2)"),
    # A bare encoder (no head in config.json): the head is the sentence-transformers modules that
    # modules.json lists (models/st_modular.py checks it is a CrossEncoder before loading).
    Family(name="st-crossencoder", description="modular sentence-transformers CrossEncoder (ettin-reranker)",
           decoder=False, openvino=True,
           detect=lambda archs, mt: _bare_encoder(archs)),
)}
FAMILY_NAMES: tuple[str, ...] = tuple(FAMILIES)


class UnknownModel(ValueError):
    """config.json describes no family this server can score."""


def family(name: str) -> Family:
    return FAMILIES[name]


def detect(config: dict[str, Any], requested: str = "auto", *, source: str = "") -> Family:
    """The family of a model from its config.json (``requested`` wins unless it is "auto").

    ``source`` (hub id or folder) tells apart the families whose architecture is a general one.
    """
    if requested != "auto":
        return FAMILIES[requested]
    architectures = list(config.get("architectures") or [])
    model_type = str(config.get("model_type") or "")
    unnamed = []
    for candidate in FAMILIES.values():
        if candidate.detect(architectures, model_type):
            if not candidate.named or any(n in source.lower() for n in candidate.named):
                return candidate
            unnamed.append(candidate)
    if _causal(architectures) or unnamed:  # (a vision-language chat model too: unnamed is not empty)
        # A causal LM scores right only with the prompt and score formula it was trained with:
        # another family's would give wrong scores without any error, so none is suggested, only
        # the rerankers published on this very architecture.
        known = "; ".join(f"if it is {c.declared_by}, say so" for c in unnamed)
        raise UnknownModel(
            f"a causal language model (architectures={architectures}, model_type={model_type!r}) is not a known "
            "reranker: a language model ranks only with the prompt and score it was trained with, so it is not "
            "served as another model's reranker" + (f"; {known}" if known else "")
        )
    raise UnknownModel(
        f"not a supported reranker: architectures={architectures or 'none'}, model_type={model_type!r}; "
        "supported: *ForSequenceClassification cross-encoders, Qwen3-Reranker, bge-reranker-v2-gemma, "
        "mxbai-rerank-v2, bge-reranker-v2-minicpm-layerwise, bge-reranker-v2.5-gemma2-lightweight, "
        "Qwen3-VL-Reranker, jina-reranker-m0, llama-nemotron-rerank, modular sentence-transformers CrossEncoders "
        "(a bare encoder with modules.json)"
    )
