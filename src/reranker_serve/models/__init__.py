"""Model families and the loader that picks one from the model's config."""

from __future__ import annotations

from pathlib import Path

from loguru import logger

from ..config import Settings, apply_offline_environment
from ..device import Placement
from ..errors import ModelLoadError
from .base import EncodeOptions, Pair, ScoringModel
from .encoder import EncoderReranker

__all__ = ["EncodeOptions", "Pair", "ScoringModel", "load_model"]


def _where(settings: Settings) -> str:
    if settings.model_path is not None:
        return f"folder {str(settings.model_path)!r}"
    return f"model {settings.model_name!r} (cache {str(settings.model_cache_dir)!r})"


def load_model(settings: Settings, placement: Placement) -> ScoringModel:
    """Load the configured model once; every failure becomes a ModelLoadError naming the source."""
    apply_offline_environment(settings)
    # Imported here, not at module import: importing sentence-transformers costs seconds, and
    # tests and `--help` should not pay for it.
    from sentence_transformers import CrossEncoder
    from transformers import AutoConfig
    from transformers.utils import logging as hf_logging

    # A server's log is lines, not progress bars (they would break JSON logs too).
    hf_logging.disable_progress_bar()

    source = settings.model_source
    offline = settings.use_offline_mode
    cache = str(settings.model_cache_dir)
    if settings.model_path is None:
        Path(cache).mkdir(parents=True, exist_ok=True)
    try:
        config = AutoConfig.from_pretrained(source, cache_dir=cache, local_files_only=offline)
    except Exception as exc:  # OSError, ValueError, hub errors: all mean "cannot read it"
        hint = " (offline mode: download it first with ./download_model.sh, or set RERANKER_MODEL_PATH)"
        raise ModelLoadError(
            f"cannot read the model config of {_where(settings)}: {exc}".splitlines()[0]
            + (hint if offline and settings.model_path is None else "")
        ) from exc

    architectures = list(getattr(config, "architectures", None) or [])
    if not any(a.endswith("ForSequenceClassification") for a in architectures):
        raise ModelLoadError(
            f"{_where(settings)} is not a supported reranker: architectures={architectures or 'none'}, "
            f"model_type={getattr(config, 'model_type', '?')!r}; supported: *ForSequenceClassification cross-encoders"
        )
    try:
        cross_encoder = CrossEncoder(
            source,
            device=placement.device,
            cache_folder=cache if settings.model_path is None else None,
            local_files_only=offline,
            max_length=settings.max_length,
            model_kwargs={"dtype": placement.dtype, "attn_implementation": "sdpa"},
        )
        model = EncoderReranker(cross_encoder, name=settings.model_id, max_length=settings.max_length)
    except Exception as exc:
        raise ModelLoadError(f"cannot load {_where(settings)}: {exc}".splitlines()[0]) from exc
    if model.max_length < settings.max_length:
        logger.warning(
            "RERANKER_MAX_LENGTH={} exceeds what {} accepts; using {}", settings.max_length, source, model.max_length
        )
    return model
