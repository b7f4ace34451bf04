"""Loading a model (the loader behind ``models.load_model``): hub policy, its family (``families.py``: detection, loader, precision, remote code),
device and precision, and what runs its forward pass.

RERANKER_MODEL_TYPE overrides the detection (e.g. ``llm`` for another causal LM trained the
bge-reranker-v2-gemma way). A model that is none of the families fails at start-up with a
message naming what its config says.
"""

from __future__ import annotations

import time
from dataclasses import replace
from functools import partial
from typing import Any, Callable

from loguru import logger

from ..bootstrap import apply_offline_environment, route_library_logging
from ..config import ModelSpec
from ..device import Placement, for_family
from ..errors import ModelLoadError
from ..families import Family, UnknownModel, detect
from ..hub import HubUnreachable, fetch, in_cache, probe_hub
from .architectures import unknown_to_transformers
from .base import ScoringModel
from .causal import flag_llm_prompt, load_causal_lm, mxbai_v2_prompt, qwen3_prompt
from .encoder import load_sequence_classifier, pair_template, qwen3_classifier_template
from .layerwise import load_layerwise
from .nemotron import load_nemotron
from .openvino import openvino_available
from .st_modular import load_st_modular
from .vision import JINA_M0, QWEN3_VL, load_vision_reranker

__all__ = ["LOADERS", "detect_family", "load_model"]

# What loads each family (families.py): (spec, family=, placement=, backend=) -> ScoringModel,
# with what sets the family apart from others of its loader bound here, not branched on by name.
# The records themselves stay light (settings validation reads them before torch is imported,
# and the model modules import them), so the table lives on this side of the import graph.
LOADERS: dict[str, Callable[..., ScoringModel]] = {
    "layerwise": load_layerwise,
    "lightweight": load_layerwise,  # family.compresses selects the architecture
    "qwen3-seq-cls": partial(load_sequence_classifier, classifier_template=qwen3_classifier_template),
    "encoder": partial(load_sequence_classifier, classifier_template=pair_template),
    "qwen3": partial(load_causal_lm, prompt=qwen3_prompt),
    "llm": partial(load_causal_lm, prompt=flag_llm_prompt),
    "mxbai-rerank-v2": partial(load_causal_lm, prompt=mxbai_v2_prompt),
    "qwen3-vl": partial(load_vision_reranker, recipe=QWEN3_VL),
    "jina-m0": partial(load_vision_reranker, recipe=JINA_M0),
    "nemotron-rerank": load_nemotron,
    "st-crossencoder": load_st_modular,
}


def detect_family(config: dict[str, Any], requested: str = "auto", *, source: str = "") -> Family:
    """The family of a model from its config.json (``requested`` wins unless it is "auto")."""
    try:
        return detect(config, requested, source=source)
    except UnknownModel as exc:
        raise ModelLoadError(str(exc)) from None


def _read_config(spec: ModelSpec) -> dict[str, Any]:
    # The raw config.json, not AutoConfig: a model whose code is its own (layer-wise rerankers)
    # cannot be instantiated before we know to trust it, but its family can be read.
    from transformers import PretrainedConfig

    try:
        config, _ = PretrainedConfig.get_config_dict(
            spec.source, cache_dir=None if spec.local else str(spec.cache_dir), local_files_only=spec.offline
        )
    except Exception as exc:  # OSError, ValueError, hub errors: all mean "cannot read it"
        hint = " (offline mode: download it first with ./download_model.sh, or set RERANKER_MODEL_PATH)"
        raise ModelLoadError(
            f"cannot read the model config of {spec.describe()}: {exc}".splitlines()[0]
            + (hint if spec.offline and not spec.local else "")
        ) from exc
    return config


def _from_hub(spec: ModelSpec) -> ModelSpec:
    """A hub model on disk before loading: downloaded with progress on a first start, or the cached
    copy when the hub cannot be reached; without either, fail at once saying how to get it."""
    if in_cache(spec.source, spec.cache_dir):
        try:
            # Loading a cached model still asks the hub for updates, with half a minute of retries
            # where it cannot be reached: find that out now, and load offline then.
            probe_hub()
        except HubUnreachable as exc:
            logger.warning("{}; loading the copy of {} cached in {}", exc, spec.source, spec.cache_dir)
            return replace(spec, offline=True)
        return spec
    started = time.perf_counter()
    logger.info("downloading {} from the hub into {} (first start only)", spec.source, spec.cache_dir)
    try:
        fetch(spec.source, cache_dir=spec.cache_dir)  # probes the hub first
    except HubUnreachable as exc:
        folder = f"models/{spec.source.split('/')[-1]}"
        raise ModelLoadError(
            f"cannot download {spec.source}: {exc}, and {spec.cache_dir} holds no copy of it. "
            f"On a machine with internet run `./download_model.sh {spec.source}` and copy {folder} here, then "
            f"start with RERANKER_MODEL_PATH={folder}; or set RERANKER_MODEL_PATH to a folder that holds the model"
        ) from None
    logger.info("downloaded {} in {:.0f} s", spec.source, time.perf_counter() - started)
    return spec


def _backend(spec: ModelSpec, family: Family, placement: Placement) -> str:
    """torch or openvino: OpenVINO runs cross-encoders on the CPU (faster there, same precision)."""
    if spec.backend == "torch":
        return "torch"
    fits = family.openvino and placement.device == "cpu"
    if spec.backend == "auto":
        return "openvino" if fits and openvino_available() else "torch"
    if not fits:
        raise ModelLoadError(
            f"RERANKER_BACKEND=openvino runs cross-encoders (family encoder) on the CPU; {spec.name!r} is a "
            f"{family.name} reranker on {placement.device}: use RERANKER_BACKEND=torch or auto"
        )
    if not openvino_available():
        raise ModelLoadError("RERANKER_BACKEND=openvino, but the openvino package is not installed")
    return "openvino"


def load_model(spec: ModelSpec, placement: Placement) -> ScoringModel:
    """Load one model; every failure becomes a ModelLoadError naming the source."""
    apply_offline_environment(offline=spec.offline)
    # Also where no serving process set up logging (download's check, the evaluation, tests).
    route_library_logging()
    if not spec.local:
        spec.cache_dir.mkdir(parents=True, exist_ok=True)
        if not spec.offline:
            spec = _from_hub(spec)
    config = _read_config(spec)
    family = detect_family(config, spec.model_type, source=spec.source)
    if not family.native and not spec.trust_remote_code:
        unknown = unknown_to_transformers(config)
        if unknown is not None:
            raise ModelLoadError(f"cannot load {spec.describe()}: {unknown}; set RERANKER_TRUST_REMOTE_CODE=true to "
                                 "run the model's own code, if you trust its source")
    if family.remote_code and not spec.trust_remote_code:
        raise ModelLoadError(
            f"{spec.describe()} is a {family.name} reranker, which runs Python code shipped with the model: "
            "set RERANKER_TRUST_REMOTE_CODE=true if you trust its source"
        )
    placement = for_family(placement, family, dtype_setting=spec.dtype)
    backend = _backend(spec, family, placement)
    if spec.quantize == "int8" and backend != "openvino":
        raise ModelLoadError(
            f"RERANKER_QUANTIZE=int8 quantizes cross-encoders served by OpenVINO on the CPU; {spec.name!r} is a "
            f"{family.name} reranker on {placement.device} ({backend}): use RERANKER_QUANTIZE=auto or off"
        )
    try:
        model: ScoringModel = LOADERS[family.name](spec, family=family, placement=placement, backend=backend)
    except ModelLoadError:
        raise
    except Exception as exc:
        message = f"cannot load {spec.describe()} as a {family.name} reranker: {exc}".splitlines()[0]
        if spec.trust_remote_code and family.decoder and isinstance(exc, (ImportError, AttributeError)):
            import transformers

            # The published layer-wise rerankers' code was written for transformers 4.4x.
            message += (f" (the model's own code does not run on the installed transformers {transformers.__version__}; "
                        "it needs the version it was written for")
            message += ("; without RERANKER_TRUST_REMOTE_CODE this server runs the architecture itself)"
                        if not family.remote_code else ")")
        raise ModelLoadError(message) from exc
    if model.max_length < spec.max_length:
        logger.warning("max_length {} exceeds what {} accepts; using {}", spec.max_length, spec.source, model.max_length)
    if spec.instruction is not None and not model.takes_instruction:
        logger.warning("{} ({} reranker) takes no instruction; the configured one is not used for it", spec.name,
                       family.name)
    return model
