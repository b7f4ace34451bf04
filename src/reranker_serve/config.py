"""Settings: every knob of the service, read from `RERANKER_*` variables and `.env`.

Settings are built once at start-up (``load_settings()``) and passed down; nothing deeper in
the code reads the environment, so tests construct their own ``Settings(...)``.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator
from pydantic import ValidationInfo
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from pydantic_settings.exceptions import SettingsError

from .calibration import read_calibration
from .families import FAMILY_NAMES
from .permissions import unreadable_message

__all__ = ["ConfigError", "ModelEntry", "ModelSpec", "Settings", "load_settings"]

ENV_PREFIX = "RERANKER_"
# RERANKER_* variables read by the shell scripts (daemon.sh), not by the server.
SCRIPT_VARIABLES = ("RERANKER_PIDFILE", "RERANKER_LOGFILE", "RERANKER_START_TIMEOUT", "RERANKER_STOP_TIMEOUT")
MAX_CHUNKS_PER_DOC = 100  # most windows one document may be split into (setting and requests)

# How a model turns (query, document) into a score; "auto" reads it from the model's config.
ModelType = Literal[("auto", *FAMILY_NAMES)]  # type: ignore[valid-type]  # the families' own list
# What runs the forward pass; "auto": OpenVINO for cross-encoders on the CPU where it is installed.
Backend = Literal["auto", "torch", "openvino"]
DType = Literal["auto", "float32", "float16", "bfloat16"]
# How a batch is laid out for attention; "auto": unpadded on CUDA if it passes its start-up self-check.
Attention = Literal["auto", "padded", "unpadded"]
# Which transformers attention implementation a model is built with; "auto": SDPA where its
# architecture has it, else eager (DeBERTa-v2/v3 has no SDPA).
AttnImplementation = Literal["auto", "sdpa", "eager"]
# int8 for cross-encoders on OpenVINO (models/quantize.py); "auto": where the CPU has no bf16 hardware.
Quantize = Literal["auto", "int8", "off"]
_DTYPE_ALIASES = {"fp32": "float32", "fp16": "float16", "half": "float16", "bf16": "bfloat16"}


def _choice(value: object) -> object:
    """Choices are case-insensitive, and dtypes take their short names (bf16, fp32, ...)."""
    if not isinstance(value, str):
        return value
    value = value.strip().lower()
    return _DTYPE_ALIASES.get(value, value)


class ConfigError(ValueError):
    """Start-up configuration is invalid. The message is one line meant for a human."""


# Options each served model may set for itself (in RERANKER_MODELS); unset, the global one holds.
_PER_MODEL = (
    "model_type", "backend", "trust_remote_code", "max_length", "dtype", "batch_size", "max_batch_tokens", "max_queue",
    "instruction", "cutoff_layer", "compress_ratio", "compress_layers", "attention", "share_prefix",
    "attn_implementation", "quantize", "quantize_calibration",
)


class ModelEntry(BaseModel):
    """One model of RERANKER_MODELS. Every option but `model` is optional and defaults to the
    global RERANKER_* variable of the same name."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, description="Hugging Face model id or local model folder.")
    name: str | list[str] | None = Field(None, description="Name(s) requests select it by; default: the id.")
    model_type: ModelType | None = None
    backend: Backend | None = None
    trust_remote_code: bool | None = None
    max_length: int | None = Field(None, ge=8, le=131072)
    dtype: DType | None = None
    batch_size: int | None = Field(None, ge=1, le=4096)
    max_batch_tokens: int | None = Field(None, ge=0)
    max_queue: int | None = Field(None, ge=1)
    instruction: str | None = None
    cutoff_layer: int | None = Field(None, ge=1)
    compress_ratio: int | None = Field(None, ge=1)
    compress_layers: list[int] | None = None
    attention: Attention | None = None
    share_prefix: bool | None = None
    attn_implementation: AttnImplementation | None = None
    quantize: Quantize | None = None
    quantize_calibration: Path | None = None

    _normalise_choice = field_validator("model_type", "backend", "dtype", "attention", "attn_implementation",
                                        "quantize", mode="before")(_choice)

    @field_validator("quantize_calibration")
    @classmethod
    def _calibration_pairs(cls, value: Path | None) -> Path | None:
        return _calibration_file(value)

    @field_validator("name")
    @classmethod
    def _names(cls, value: str | list[str] | None) -> str | list[str] | None:
        for name in [value] if isinstance(value, str) else value or []:
            if not name.strip():
                raise ValueError("a model name must not be empty")
        return value

    @field_validator("model")
    @classmethod
    def _local_folder_is_a_model(cls, value: str) -> str:
        if _is_local(value):
            _check_model_folder(Path(value).expanduser())
        return value


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelSpec:
    """One served model, resolved: where it comes from, its names, and its own options."""

    names: tuple[str, ...]  # the first is the one replies carry
    source: str  # local folder or hub id
    local: bool
    cache_dir: Path
    offline: bool
    model_type: str
    backend: str
    trust_remote_code: bool
    max_length: int
    dtype: str
    batch_size: int
    max_batch_tokens: int
    max_queue: int
    instruction: str | None
    cutoff_layer: int | None
    compress_ratio: int
    compress_layers: tuple[int, ...]
    attention: str = "auto"
    share_prefix: bool = True
    attn_implementation: str = "auto"
    quantize: str = "auto"
    quantize_calibration: Path | None = None

    @property
    def name(self) -> str:
        return self.names[0]

    def describe(self) -> str:
        """Where it loads from, for messages: ``folder '/m/x'`` or ``model 'org/x' (cache './models')``."""
        return f"folder {self.source!r}" if self.local else f"model {self.source!r} (cache {str(self.cache_dir)!r})"


def _is_local(source: str) -> bool:
    # Hub ids are "name" or "org/name"; anything that exists on disk or is written as a path is a folder.
    return source.startswith(("/", "./", "../", "~")) or Path(source).expanduser().is_dir()


def _check_model_folder(folder: Path) -> None:
    # Unreadable files first: as root's files in a non-root container they look missing otherwise.
    if (denied := unreadable_message(folder)) is not None:
        raise ValueError(denied)
    if not folder.is_dir():
        raise ValueError(f"folder {str(folder)!r} does not exist")
    if not (folder / "config.json").is_file():
        raise ValueError(f"folder {str(folder)!r} holds no config.json: is it a model folder?")


def _calibration_file(value: Path | None) -> Path | None:
    """An int8 calibration file that exists and parses (its pairs are read again when a model quantizes)."""
    if value is None:
        return None
    value = value.expanduser()
    read_calibration(value)  # ValueError: the line at fault
    return value


def _parse_model_list(text: str) -> list[Any]:
    """``rerank-v3.5=BAAI/bge-reranker-v2-m3, /models/bge-base`` or a JSON list of such strings
    and ``{"model": ..., "name": ..., <option>: ...}`` objects."""
    text = text.strip()
    if text.startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"starts with '[' but is not a JSON list ({exc})") from None
        if not isinstance(items, list):
            raise ValueError("must be a JSON list")
    else:
        items = [item for item in re.split(r"[\s,]+", text) if item]
    out: list[Any] = []
    for item in items:
        if isinstance(item, str):
            name, sep, source = item.strip().partition("=")
            out.append({"model": source.strip(), "name": name.strip()} if sep else {"model": name.strip()})
        else:
            out.append(item)
    return out


def _merge_specs(specs: list[ModelSpec]) -> list[ModelSpec]:
    """Entries that differ only in their names are one model (loaded once, every name served);
    a name given to two different models is an error."""
    merged: dict[ModelSpec, ModelSpec] = {}  # keyed by the spec without its names
    for spec in specs:
        key = replace(spec, names=())
        kept = merged.get(key)
        merged[key] = spec if kept is None else replace(kept, names=tuple(dict.fromkeys(kept.names + spec.names)))
    owners: dict[str, ModelSpec] = {}
    for spec in merged.values():
        for name in spec.names:
            other = owners.setdefault(name, spec)
            if other is not spec:
                what = "two different models" if other.source != spec.source else "one model with two sets of options"
                raise ValueError(f"RERANKER_MODELS: the name {name!r} is given to {what}")
    return list(merged.values())


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
    api_keys: str | None = Field(
        None, description="Named API keys with limits and priorities: a JSON object, or the path of a file holding one "
        "(read again when it changes)."
    )
    instance_id: str | None = Field(
        None, description="A label /health and /ready report; daemon.sh sets a fresh one per start to know that the "
        "server answering is the one it started.",
    )

    # --- model --------------------------------------------------------------------------
    model_name: str = Field("BAAI/bge-reranker-v2-m3", min_length=1, description="Hugging Face model id.")
    model_path: Path | None = Field(None, description="Local model folder; wins over MODEL_NAME.")
    served_model_name: str | None = Field(None, description="Name reported in replies and accepted in `model`.")
    model_cache_dir: Path = Field(Path("./models"), description="Where downloads land (Hugging Face cache layout).")
    use_offline_mode: bool = Field(False, description="Never touch the network; load from MODEL_PATH or the cache.")
    max_length: int = Field(512, ge=8, le=131072, description="Tokens per (query, document) pair, specials included.")
    device: Literal["auto", "cuda", "mps", "cpu"] = "auto"
    use_fp16: bool = Field(True, description="Half precision on CUDA (ignored on CPU/MPS).")
    dtype: DType = Field("auto", description="Explicit compute dtype; wins over USE_FP16.")
    model_type: ModelType = Field("auto", description="Model family; auto: read from the model's config.")
    backend: Backend = Field(
        "auto", description="Forward pass: torch, or openvino (cross-encoders on the CPU); auto: openvino where it applies."
    )
    trust_remote_code: bool = Field(
        False, description="Run Python code shipped with the model instead of the server's own implementation."
    )
    instruction: str | None = Field(
        None, description="Default instruction (Qwen3-Reranker) or prompt (LLM rerankers); unset: the model card's."
    )
    cutoff_layer: int | None = Field(None, ge=1, description="Layer whose score layer-wise rerankers use.")
    compress_ratio: int = Field(1, ge=1, description="Token compression of lightweight rerankers (1: none).")
    compress_layers: Annotated[list[int], NoDecode] = Field(
        default_factory=lambda: [8], description="Layers where lightweight rerankers compress (comma-separated)."
    )
    models: Annotated[list[ModelEntry], NoDecode] = Field(
        default_factory=list,
        description="Several models: `alias=model,model2,...` or a JSON list; empty: MODEL_PATH / MODEL_NAME.",
    )
    unknown_model: Literal["auto", "error", "default"] = Field(
        "auto",
        description="A request naming a model not served: auto (the model when only one is served, else 404), "
        "error (404) or default (the default model).",
    )

    # --- engine ---------------------------------------------------------------------------
    batch_size: int = Field(
        0, ge=0, le=4096, description="Most pairs in one forward pass; 0: per device (32 on CPU/MPS, 1024 on CUDA)."
    )
    max_batch_tokens: int = Field(
        0, ge=0, description="Most tokens in one forward pass (padded: pairs × longest pair); 0: per device."
    )
    max_queue: int = Field(4096, ge=1, description="Most pairs waiting for the model; beyond it requests get 429.")
    request_timeout: float = Field(60.0, gt=0, description="Seconds a request may wait and run before 504.")
    batch_wait_ms: float = Field(
        0.0, ge=0, le=1000, description="Extra wait for more pairs when a batch is not full (0: none)."
    )
    warmup_seconds: float = Field(
        30.0, ge=0, description="Most seconds start-up spends running the model over the batch shapes it will see, "
        "where a new shape costs preparation (0: one small pass only).",
    )
    batch_max_wait: float = Field(
        10.0, gt=0, description="Seconds after which a batch-priority request is served like an interactive one."
    )
    batch_queue_share: float = Field(
        0.75, gt=0, le=1, description="Share of MAX_QUEUE that batch-priority work may fill; the rest is kept for "
        "interactive requests."
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
    max_request_tokens: int = Field(
        0, ge=0, description="Most model tokens one request may cost, every window of a chunked document counted "
        "(413 beyond); 0: MAX_DOCUMENTS x the model's window (what the largest request costs unchunked).",
    )
    max_request_bytes: int = Field(
        16 * 1024 * 1024, ge=1024, description="Largest request body; larger ones get 413 before parsing."
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Origins allowed by CORS (comma-separated or JSON list); empty: CORS off."
    )

    # --- HTTP hygiene and access (protocol.py, security.py) ----------------------------------
    allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Host header values served (comma-separated; `*`: any); empty: localhost "
        "names only when HOST is a loopback address (DNS rebinding), any otherwise.",
    )
    metrics_port: int | None = Field(
        None, ge=1, le=65535, description="A second listener, on HOST, serving only /metrics without a key (for "
        "scrapers); unset: none (/metrics on PORT needs an admin key when keys are set).",
    )
    max_header_bytes: int = Field(
        32 * 1024, ge=1024, description="Largest request line plus headers; larger: 431 and the connection closed.",
    )
    max_headers: int = Field(100, ge=8, description="Most header fields in one request; more: 431.")
    header_timeout: float = Field(
        10.0, gt=0, description="Seconds a connection gets to send a complete request line and headers; then 408.",
    )
    body_timeout: float = Field(60.0, gt=0, description="Seconds a request gets to send its whole body; then 408.")
    max_connections: int = Field(
        1024, ge=1, description="Most open connections per server process; more are refused (503) and logged.",
    )
    auth_failures_per_minute: int = Field(
        10, ge=0, description="Wrong API keys one client address may send per minute before 429 (0: no limit).",
    )

    # --- Ray Serve (`python -m reranker_serve.ray`; HOST/PORT are where Serve's proxy listens) --
    ray_address: str | None = Field(
        None, description="Ray cluster to join (e.g. auto, ray://head:10001); unset: start a local one."
    )
    ray_replicas: int = Field(
        1, ge=1, description="Replicas (each loads the model once); the start count with autoscaling."
    )
    ray_min_replicas: int = Field(1, ge=0, description="Autoscaling floor (used when RAY_MAX_REPLICAS is set).")
    ray_max_replicas: int = Field(0, ge=0, description="Autoscaling ceiling; 0: no autoscaling, RAY_REPLICAS fixed.")
    ray_target_ongoing_requests: float = Field(
        2.0, gt=0, description="Autoscaling target: requests in flight per replica."
    )
    ray_max_ongoing_requests: int = Field(
        32, ge=1, description="Most requests one replica holds at once (more wait in Serve's queue)."
    )
    ray_num_cpus: float = Field(1.0, ge=0, description="CPUs Ray reserves per replica (ray_actor_options).")
    ray_num_gpus: float = Field(0.0, ge=0, description="GPUs Ray reserves per replica (fractions share one GPU).")

    # --- GPU engine -------------------------------------------------------------------------
    attention: Attention = Field(
        "auto", description="Batches padded, or unpadded (packed tokens, variable-length attention: cross-encoders, "
        "Qwen3/Gemma LLM rerankers); auto: unpadded on CUDA where its start-up self-check agrees with padded.",
    )
    share_prefix: bool = Field(
        True, description="LLM rerankers: compute a request's prompt prefix (instruction, query) once for all documents."
    )
    attn_implementation: AttnImplementation = Field(
        "auto", description="transformers attention implementation: sdpa, eager; auto: sdpa where the architecture "
        "has it, else eager (logged).",
    )

    # --- int8 (models/quantize.py) -------------------------------------------------------------
    quantize: Quantize = Field(
        "auto", description="int8 for cross-encoders on OpenVINO (CPU), kept only if its start-up self-check agrees "
        "with float32: int8 (required), off, or auto (int8 where the CPU has no bf16 hardware).",
    )
    quantize_calibration: Path | None = Field(
        None, description="JSON Lines of {\"query\", \"document\"} pairs from your domain that int8 is calibrated on; "
        "unset: a built-in multilingual set.",
    )

    _calibration_pairs = field_validator("quantize_calibration")(ModelEntry._calibration_pairs.__func__)

    # --- score cache and tracing (cache.py, tracing.py) -------------------------------------
    cache_mb: float = Field(
        64, ge=0, le=1024 * 1024,
        description="Memory (MiB, per server process) for cached raw scores of (query, document) pairs; 0: no cache.",
    )
    otlp_endpoint: str | None = Field(
        None, description="OpenTelemetry collector to send request traces to (needs reranker-serve[otel]); unset: "
        "no tracing.",
    )
    otlp_protocol: Literal["http/protobuf", "grpc"] = Field(
        "http/protobuf", description="OTLP transport for RERANKER_OTLP_ENDPOINT.",
    )

    # --- state shared by replicas (shared.py) ------------------------------------------------
    redis_url: str | None = Field(
        None, description="Redis that replicas share key limits and cached scores through (needs "
        "reranker-serve[redis]), e.g. redis://redis:6379/0; unset: each server its own.",
    )
    redis_prefix: str = Field("reranker-serve:", description="Prefix of every Redis key this service writes.")
    redis_timeout: float = Field(
        0.25, gt=0, le=30, description="Seconds a Redis call may take before the server falls back to local state.",
    )
    redis_cache_ttl: float = Field(
        3600.0, gt=0, description="Seconds a score cached on Redis lives (bound its size with Redis's maxmemory).",
    )

    @field_validator("redis_url", mode="before")
    @classmethod
    def _redis_url(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        if not value.strip():  # `RERANKER_REDIS_URL=` in a .env: no Redis
            return None
        url = value.strip()
        if not url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must be a redis://, rediss:// or unix:// URL, e.g. redis://127.0.0.1:6379/0")
        try:
            import redis  # noqa: F401
        except ImportError:
            raise ValueError("needs the redis package: pip install 'reranker-serve[redis]'") from None
        return url

    @field_validator("log_level", "log_format", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    _normalise_choice = field_validator("dtype", "device", "model_type", "backend", "unknown_model", "attention",
                                        "attn_implementation", "quantize", mode="before")(_choice)

    @field_validator("compress_layers", mode="before")
    @classmethod
    def _split_ints(cls, value: object) -> object:
        if isinstance(value, str):
            return [v for v in re.split(r"[\s,]+", value.strip().strip("[]")) if v]
        return value

    @field_validator("models", mode="before")
    @classmethod
    def _parse_models(cls, value: object) -> object:
        return _parse_model_list(value) if isinstance(value, str) else value

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

    @field_validator("allowed_hosts", mode="before")
    @classmethod
    def _split_hosts(cls, value: object) -> object:
        if isinstance(value, str):
            return [h.strip().lower() for h in value.split(",") if h.strip()]
        return value

    @field_validator("api_key", mode="before")
    @classmethod
    def _blank_key(cls, value: object) -> object:
        # Whitespace is never a key: it would match `Authorization: Bearer ` (a .env line that
        # meant to set one). An empty value stays "no key" (the .env.example line) but see
        # _empty_key_on_open_host.
        if isinstance(value, str) and value and not value.strip():
            raise ValueError("is whitespace only: set a real key, or remove the variable to run without one")
        return value or None

    @field_validator("otlp_endpoint", mode="before")
    @classmethod
    def _otlp_endpoint(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        if not value.strip():  # `RERANKER_OTLP_ENDPOINT=` in a .env: no tracing
            return None
        from .tracing import check_endpoint

        return check_endpoint(value.strip())

    @field_validator("otlp_protocol")
    @classmethod
    def _otlp_protocol(cls, value: str, info: ValidationInfo) -> str:
        from .tracing import check_protocol

        return check_protocol(value, endpoint=info.data.get("otlp_endpoint"))

    @field_validator("api_keys", "metrics_port", "instance_id", "served_model_name", "model_path", "instruction", "cutoff_layer", "quantize_calibration", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        # `RERANKER_API_KEY=` in a .env means "no key", not "the empty key".
        return None if isinstance(value, str) and not value.strip() else value

    @model_validator(mode="after")
    def _empty_key_on_open_host(self) -> Settings:
        # RERANKER_API_KEY= (set, but empty) on an address other machines reach is a key that
        # went missing (an empty secret, an unset shell variable), not a wish to run open.
        if "api_key" in self.model_fields_set and self.api_key is None and self.api_keys is None \
                and not is_loopback(self.host):
            raise ValueError(
                f"RERANKER_API_KEY is set but empty while RERANKER_HOST={self.host} is reachable from other machines: "
                "set a key, or remove the variable to run without one"
            )
        return self

    @model_validator(mode="after")
    def _keys_parse(self) -> Settings:
        if self.api_keys is not None:
            from .keys import parse_keys, read_keys_setting

            try:
                parse_keys(read_keys_setting(self.api_keys), single_key=self.api_key)
            except (OSError, ValueError) as exc:
                raise ValueError(f"RERANKER_API_KEYS: {exc}") from None
        return self

    @field_validator("model_path")
    @classmethod
    def _model_path_is_a_model(cls, value: Path | None) -> Path | None:
        if value is None:
            return None
        value = value.expanduser()
        _check_model_folder(value)
        return value

    @field_validator("model_cache_dir")
    @classmethod
    def _expand(cls, value: Path) -> Path:
        return value.expanduser()

    _ray_address_empty_is_unset = field_validator("ray_address", mode="before")(_empty_is_unset.__func__)

    @model_validator(mode="after")
    def _ray_replica_bounds(self) -> Settings:
        if self.ray_max_replicas and not self.ray_min_replicas <= self.ray_replicas <= self.ray_max_replicas:
            raise ValueError(
                f"RERANKER_RAY_REPLICAS ({self.ray_replicas}) must lie between RERANKER_RAY_MIN_REPLICAS "
                f"({self.ray_min_replicas}) and RERANKER_RAY_MAX_REPLICAS ({self.ray_max_replicas})"
            )
        return self

    _specs: list[ModelSpec] = PrivateAttr(default_factory=list)

    @model_validator(mode="after")
    def _build_specs(self) -> Settings:
        self._specs = _merge_specs([self._spec(entry) for entry in self.models] if self.models else [self._single()])
        for spec in self._specs:
            # A request larger than the queue could never be admitted: 429 forever.
            if spec.max_queue < self.max_documents:
                where = "RERANKER_MAX_QUEUE" if spec.max_queue == self.max_queue else f"max_queue of {spec.name!r}"
                raise ValueError(
                    f"{where} ({spec.max_queue}) must be at least RERANKER_MAX_DOCUMENTS ({self.max_documents})"
                )
            if spec.quantize == "int8" and spec.dtype == "float32":
                raise ValueError(
                    f"{spec.name}: RERANKER_QUANTIZE=int8 and RERANKER_DTYPE=float32 (exact scores) contradict each "
                    "other: drop one"
                )
        return self

    def _single(self) -> ModelSpec:
        """The one model of MODEL_PATH / MODEL_NAME / SERVED_MODEL_NAME (RERANKER_MODELS unset)."""
        if self.served_model_name:
            name = self.served_model_name
        elif self.model_path is not None and "model_name" not in self.model_fields_set:
            name = self.model_path.name
        else:
            name = self.model_name
        # The hub id is accepted as well, so clients configured with it work with any alias.
        names = (name, self.model_name) if self.model_path is None or "model_name" in self.model_fields_set else (name,)
        source = str(self.model_path) if self.model_path is not None else self.model_name
        return self._spec(ModelEntry(model=source, name=list(dict.fromkeys(names))), local=self.model_path is not None)

    def _spec(self, entry: ModelEntry, *, local: bool | None = None) -> ModelSpec:
        if local is None:
            local = _is_local(entry.model)
        source = str(Path(entry.model).expanduser()) if local else entry.model
        if isinstance(entry.name, str):
            names: tuple[str, ...] = (entry.name,)
        elif entry.name:
            names = tuple(entry.name)
        else:
            names = (Path(source).name if local else source,)
        inherit = {key: getattr(self, key) for key in _PER_MODEL}
        inherit.update(entry.model_dump(include=set(_PER_MODEL), exclude_none=True))
        return ModelSpec(
            names=names, source=source, local=local, cache_dir=self.model_cache_dir, offline=self.use_offline_mode,
            **{**inherit, "compress_layers": tuple(inherit["compress_layers"])},
        )

    @property
    def model_specs(self) -> list[ModelSpec]:
        """Every served model, the default first."""
        return list(self._specs)


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the server on this machine (127.0.0.0/8, ::1, localhost)."""
    import ipaddress

    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False


def describe_validation_error(error: ValidationError) -> str:
    """One line naming each bad variable, e.g. ``RERANKER_PORT: must be ≤ 65535 (got '70000')``
    or ``RERANKER_MODELS[1].max_length: ...``."""
    parts = []
    for item in error.errors():
        message = item["msg"].removeprefix("Value error, ")
        got = item.get("input")
        shown = f" (got {got!r})" if isinstance(got, (str, int, float)) and item["type"] != "missing" else ""
        loc = item["loc"]
        if not loc:  # a check across variables: its message names them
            parts.append(f"{message}{shown}")
            continue
        name = ENV_PREFIX + str(loc[0]).upper() + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc[1:])
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


def apply_offline_environment(*, offline: bool) -> None:
    """Offline mode: make every Hugging Face library refuse the network, not just our calls;
    and in any mode: no hub telemetry, no progress bars in a server's log.

    huggingface_hub reads these variables when it is first imported, so this runs before the
    model libraries are imported (in ``__main__``) and again before loading (harmless twice).
    """
    if offline:
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
