"""What an architecture asks of the loader: which transformers attention implementation builds it.

transformers refuses to build a model with an attention implementation its class does not have
(DeBERTa-v2/v3 has no SDPA: asking for it stops the load). So the implementation is chosen per
architecture (RERANKER_ATTN_IMPLEMENTATION=auto): SDPA where the class supports it (fused,
and what the OpenVINO conversion traces best), else eager, with a log line saying why. A model
whose classes ship with it (remote code) keeps what its own code picks. ``eager`` set explicitly
always holds; ``sdpa`` set for a class without it stops the start with a message saying so.
"""

from __future__ import annotations

from typing import Any

from loguru import logger

from ..config import ModelSpec
from ..errors import ModelLoadError

__all__ = ["attn_implementation", "model_class", "unknown_to_transformers"]


def _load_config(spec: ModelSpec) -> Any:
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(
        spec.source, cache_dir=None if spec.local else str(spec.cache_dir), local_files_only=spec.offline,
        trust_remote_code=spec.trust_remote_code,
    )


def model_class(config: Any, auto_class: str) -> type | None:
    """The transformers class ``auto_class`` builds for ``config`` (None: not one of transformers')."""
    import transformers

    mapping = getattr(transformers, auto_class)._model_mapping
    try:
        return mapping[type(config)]  # type: ignore[no-any-return]
    except KeyError:  # a config class of the model's own code
        return None


def attn_implementation(spec: ModelSpec, *, auto_class: str, config: Any | None = None) -> tuple[str | None, str]:
    """The ``attn_implementation`` to load ``spec`` with (None: the model's own choice), and why."""
    setting = spec.attn_implementation
    if setting == "eager":
        return setting, "RERANKER_ATTN_IMPLEMENTATION=eager"
    cls = model_class(config if config is not None else _load_config(spec), auto_class)
    if setting == "sdpa":
        if cls is not None and not cls._supports_sdpa:
            raise ModelLoadError(f"RERANKER_ATTN_IMPLEMENTATION=sdpa: {cls.__name__} has no SDPA attention; "
                                 "set it to eager or auto")
        return setting, "RERANKER_ATTN_IMPLEMENTATION=sdpa"
    if cls is None:
        return None, "the model's own code picks its attention"
    if cls._supports_sdpa:
        return "sdpa", "sdpa"
    why = f"eager: {cls.__name__} has no SDPA attention"
    logger.info("{}: {} (RERANKER_ATTN_IMPLEMENTATION=sdpa|eager overrides)", spec.name, why)
    return "eager", why


def unknown_to_transformers(config: dict[str, Any]) -> str | None:
    """Why a model needs its own code to load (a model_type transformers does not have), or None."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    model_type = str(config.get("model_type") or "")
    if not model_type or model_type in CONFIG_MAPPING:
        return None
    architectures = config.get("architectures") or []
    where = " (its code ships with it: auto_map)" if config.get("auto_map") else ""
    return (f"model_type {model_type!r} ({', '.join(architectures) or 'no architectures'}) is not an architecture the "
            f"installed transformers has{where}")
