"""Settings: every knob of the service, read from `RERANKER_*` variables and `.env`.

Settings are built once at start-up (``load_settings()``) and passed down; nothing deeper in
the code reads the environment, so tests construct their own ``Settings(...)``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from pydantic_settings.exceptions import SettingsError

__all__ = ["ConfigError", "Settings", "load_settings"]

ENV_PREFIX = "RERANKER_"
MAX_CHUNKS_PER_DOC = 100  # most windows one document may be split into (setting and requests)


class ConfigError(ValueError):
    """Start-up configuration is invalid. The message is one line meant for a human."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        validate_default=True,
    )

    # --- server -------------------------------------------------------------------------
    host: str = Field("127.0.0.1", description="Interface to bind (0.0.0.0 exposes it to the network).")
    port: int = Field(8000, ge=0, le=65535, description="TCP port (0: any free port).")
    workers: int = Field(1, ge=1, le=64, description="Server processes; each loads its own model copy.")
    log_level: Literal["trace", "debug", "info", "warning", "error", "critical"] = "info"
    log_format: Literal["text", "json"] = Field("text", description="Log lines as text or as JSON objects.")
    api_key: str | None = Field(None, description="When set, rerank routes need `Authorization: Bearer KEY`.")

    # --- model --------------------------------------------------------------------------
    model_name: str = Field("BAAI/bge-reranker-v2-m3", min_length=1, description="Hugging Face model id.")
    model_path: Path | None = Field(None, description="Local model folder; wins over MODEL_NAME.")
    served_model_name: str | None = Field(None, description="Name reported in replies and accepted in `model`.")
    model_cache_dir: Path = Field(Path("./models"), description="Where downloads land (Hugging Face cache layout).")
    use_offline_mode: bool = Field(False, description="Never touch the network; load from MODEL_PATH or the cache.")
    max_length: int = Field(512, ge=8, le=131072, description="Tokens per (query, document) pair, specials included.")
    device: Literal["auto", "cuda", "mps", "cpu"] = "auto"
    use_fp16: bool = Field(True, description="Half precision on CUDA (ignored on CPU/MPS).")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        "auto", description="Explicit compute dtype; wins over USE_FP16."
    )

    # --- engine ---------------------------------------------------------------------------
    batch_size: int = Field(32, ge=1, le=4096, description="Most pairs in one forward pass.")
    max_batch_tokens: int = Field(
        0, ge=0, description="Most padded tokens in one forward pass (pairs × longest pair); 0: per device."
    )
    max_queue: int = Field(4096, ge=1, description="Most pairs waiting for the model; beyond it requests get 429.")
    request_timeout: float = Field(60.0, gt=0, description="Seconds a request may wait and run before 504.")
    batch_wait_ms: float = Field(
        0.0, ge=0, le=1000, description="Extra wait for more pairs when a batch is not full (0: none)."
    )
    shutdown_timeout: float = Field(
        30.0, gt=0, description="Seconds in-flight requests get to finish after SIGTERM."
    )
    num_threads: int = Field(0, ge=0, description="torch intra-op threads on CPU (0: one per core).")

    max_chunks_per_doc: int = Field(
        1, ge=1, le=MAX_CHUNKS_PER_DOC, description="Windows a long document is split into, scored by its best (1: truncate)."
    )
    chunk_overlap: int = Field(32, ge=0, description="Tokens shared by consecutive windows of a chunked document.")

    # --- limits ---------------------------------------------------------------------------
    max_documents: int = Field(1000, ge=1, description="Most documents in one request.")
    max_request_bytes: int = Field(
        16 * 1024 * 1024, ge=1024, description="Largest request body; larger ones get 413 before parsing."
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Origins allowed by CORS (comma-separated or JSON list); empty: CORS off."
    )

    @field_validator("log_level", "log_format", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @field_validator("dtype", "device", mode="before")
    @classmethod
    def _normalise_choice(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        value = value.strip().lower()
        return {"fp32": "float32", "fp16": "float16", "half": "float16", "bf16": "bfloat16"}.get(value, value)

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                try:
                    return json.loads(text)
                except json.JSONDecodeError:
                    raise ValueError("starts with '[' but is not a JSON list of origins") from None
            return [o.strip() for o in text.split(",") if o.strip()]
        return value

    @field_validator("api_key", "served_model_name", "model_path", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        # `RERANKER_API_KEY=` in a .env means "no key", not "the empty key".
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("model_path")
    @classmethod
    def _model_path_is_a_model(cls, value: Path | None) -> Path | None:
        if value is None:
            return None
        value = value.expanduser()
        if not value.is_dir():
            raise ValueError(f"folder {str(value)!r} does not exist")
        if not (value / "config.json").is_file():
            raise ValueError(f"folder {str(value)!r} holds no config.json: is it a model folder?")
        return value

    @field_validator("model_cache_dir")
    @classmethod
    def _expand(cls, value: Path) -> Path:
        return value.expanduser()

    @model_validator(mode="after")
    def _queue_holds_a_request(self) -> Settings:
        # A request larger than the queue could never be admitted: 429 forever.
        if self.max_queue < self.max_documents:
            raise ValueError(
                f"RERANKER_MAX_QUEUE ({self.max_queue}) must be at least RERANKER_MAX_DOCUMENTS ({self.max_documents})"
            )
        return self

    @property
    def model_source(self) -> str:
        """What the loader gets: the local folder when there is one, else the hub id."""
        return str(self.model_path) if self.model_path is not None else self.model_name

    @property
    def model_id(self) -> str:
        """The name replies carry and the `model` field may ask for."""
        if self.served_model_name:
            return self.served_model_name
        if self.model_path is not None and "model_name" not in self.model_fields_set:
            return self.model_path.name
        return self.model_name


def describe_validation_error(error: ValidationError) -> str:
    """One line naming each bad variable, e.g. ``RERANKER_PORT: must be ≤ 65535 (got '70000')``."""
    parts = []
    for item in error.errors():
        name = ENV_PREFIX + "_".join(str(p) for p in item["loc"]).upper() if item["loc"] else "settings"
        message = item["msg"].removeprefix("Value error, ")
        got = item.get("input")
        shown = f" (got {got!r})" if isinstance(got, (str, int, float)) and item["type"] != "missing" else ""
        parts.append(f"{name}: {message}{shown}")
    return "; ".join(parts)


def load_settings(**overrides: object) -> Settings:
    """Build Settings from the environment (and `.env`), raising ConfigError with one clear line."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError(f"invalid configuration: {describe_validation_error(exc)}") from None
    except SettingsError as exc:  # a value pydantic-settings could not even decode (e.g. bad JSON)
        cause = f": {exc.__cause__}" if exc.__cause__ else ""
        raise ConfigError(f"invalid configuration: {exc}{cause}") from None


def apply_offline_environment(settings: Settings) -> None:
    """Offline mode: make every Hugging Face library refuse the network, not just our calls;
    and in any mode: no hub telemetry, no progress bars in a server's log.

    huggingface_hub reads these variables when it is first imported, so this runs before the
    model libraries are imported (in ``__main__``) and again before loading (harmless twice).
    """
    if settings.use_offline_mode:
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
