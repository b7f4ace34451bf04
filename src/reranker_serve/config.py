"""Settings: every knob of the service, read from `RERANKER_*` variables and `.env`.

Settings are built once at start-up (``load_settings()``) and passed down; nothing deeper in
the code reads the environment, so tests construct their own ``Settings(...)``.

Adding a setting (each is also a line in .env.example and in the README's configuration table;
tests/test_docs.py holds the three to the same list):
- server-wide: one ``Field`` in ``Settings``, in its section, read from ``RERANKER_<NAME>``;
- per model (one each entry of RERANKER_MODELS may set for itself, defaulting to the global
  variable): one ``Field`` in ``ModelOptions``. That one line gives ``RERANKER_<NAME>`` and
  ``settings.<name>`` (Settings inherits ModelOptions), the optional ``<name>`` of a
  RERANKER_MODELS entry (``ModelEntry``) and ``spec.<name>`` of the resolved model
  (``ModelSpec``), all generated below from ModelOptions' fields;
- Ray Serve: one ``Field`` in ``RaySettings``, read from ``RERANKER_RAY_<NAME>`` as
  ``settings.ray.<name>``.
This module is a leaf: its validators check syntax (types, ranges, choices, a folder that must
hold a model). What a setting points at (a key file, an OpenTelemetry exporter) is loaded and
checked by its owner at start-up (keys.KeyRing, tracing, through bootstrap.start_up_settings),
with a message naming the variable.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

from pydantic import (BaseModel, BeforeValidator, ConfigDict, Field, PrivateAttr, ValidationError, create_model,
                      field_validator, model_validator)
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict
from pydantic_settings.exceptions import SettingsError

from .families import FAMILY_NAMES
from .permissions import unreadable_message

__all__ = ["ConfigError", "ModelEntry", "ModelOptions", "ModelSpec", "RaySettings", "Settings", "load_settings",
           "variable_names"]

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


# On a field's type, so the options' copies in ModelEntry normalise too.
_Choice = BeforeValidator(_choice)


def _user_path(value: object) -> object:
    """``~`` expanded; an empty value (``RERANKER_X=`` in a .env) is unset."""
    if isinstance(value, str):
        value = value.strip()
        if not value:
            return None
        return Path(value).expanduser()
    return value.expanduser() if isinstance(value, Path) else value


_UserPath = BeforeValidator(_user_path)


class ConfigError(ValueError):
    """Start-up configuration is invalid. The message is one line meant for a human."""


class ModelOptions(BaseModel):
    """Options each served model may set for itself (in RERANKER_MODELS); unset, the global
    RERANKER_<NAME> holds. The one declaration of them: Settings inherits these fields (with
    their global defaults), ModelEntry and ModelSpec are generated from them. A new per-model
    option is one Field here."""

    model_type: Annotated[ModelType, _Choice] = Field(
        "auto", description="Model family; auto: read from the model's config."
    )
    backend: Annotated[Backend, _Choice] = Field(
        "auto", description="Forward pass: torch, or openvino (cross-encoders on the CPU); auto: openvino where it applies."
    )
    trust_remote_code: bool = Field(
        False, description="Run Python code shipped with the model instead of the server's own implementation."
    )
    max_length: int = Field(512, ge=8, le=131072, description="Tokens per (query, document) pair, specials included.")
    dtype: Annotated[DType, _Choice] = Field("auto", description="Explicit compute dtype; wins over USE_FP16.")
    batch_size: int = Field(
        0, ge=0, le=4096, description="Most pairs in one forward pass; 0: per device (32 on CPU/MPS, 1024 on CUDA)."
    )
    max_batch_tokens: int = Field(
        0, ge=0, description="Most tokens in one forward pass (padded: pairs × longest pair); 0: per device."
    )
    max_queue: int = Field(4096, ge=1, description="Most pairs waiting for the model; beyond it requests get 429.")
    instruction: str | None = Field(
        None, description="Default instruction (Qwen3-Reranker) or prompt (LLM rerankers); unset: the model card's."
    )
    cutoff_layer: int | None = Field(None, ge=1, description="Layer whose score layer-wise rerankers use.")
    compress_ratio: int = Field(1, ge=1, description="Token compression of lightweight rerankers (1: none).")
    compress_layers: Annotated[list[int], NoDecode] = Field(
        default_factory=lambda: [8], description="Layers where lightweight rerankers compress (comma-separated)."
    )
    attention: Annotated[Attention, _Choice] = Field(
        "auto", description="Batches padded, or unpadded (packed tokens, variable-length attention: cross-encoders, "
        "Qwen3/Gemma LLM rerankers); auto: unpadded on CUDA where its start-up self-check agrees with padded.",
    )
    share_prefix: bool = Field(
        True, description="LLM rerankers: compute a request's prompt prefix (instruction, query) once for all documents."
    )
    attn_implementation: Annotated[AttnImplementation, _Choice] = Field(
        "auto", description="transformers attention implementation: sdpa, eager; auto: sdpa where the architecture "
        "has it, else eager (logged).",
    )
    # int8 (models/quantize.py). The calibration file's contents are read and checked by their
    # owner at start-up (bootstrap.check_owned_settings), like the key file.
    quantize: Annotated[Quantize, _Choice] = Field(
        "auto", description="int8 for cross-encoders on OpenVINO (CPU), kept only if its start-up self-check agrees "
        "with float32: int8 (required), off, or auto (int8 where the CPU has no bf16 hardware).",
    )
    quantize_calibration: Annotated[Optional[Path], _UserPath] = Field(
        None, description="JSON Lines of {\"query\", \"document\"} pairs from your domain that int8 is calibrated on; "
        "unset: a built-in multilingual set.",
    )


_PER_MODEL = tuple(ModelOptions.model_fields)
# Bounds of a model's own value where they differ from the global variable's: globally 0 means
# "per device", a model's own batch size is a number.
_ENTRY_BOUNDS: dict[str, FieldInfo] = {"batch_size": Field(None, ge=1, le=4096)}


class _EntryBase(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, description="Hugging Face model id or local model folder.")
    name: str | list[str] | None = Field(None, description="Name(s) requests select it by; default: the id.")

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


def _unset_by_default(field: FieldInfo) -> FieldInfo:
    """The option as a RERANKER_MODELS entry has it: the same type and bounds, default None."""
    optional = FieldInfo.merge_field_infos(field)  # a copy
    optional.default, optional.default_factory = None, None
    return optional


# One model of RERANKER_MODELS: ``model``, ``name`` and every ModelOptions field, optional (None:
# the global RERANKER_* variable of the same name holds).
ModelEntry = create_model(  # type: ignore[call-overload]
    "ModelEntry", __base__=_EntryBase, __module__=__name__,
    **{name: (Optional[field.annotation], _ENTRY_BOUNDS.get(name) or _unset_by_default(field))
       for name, field in ModelOptions.model_fields.items()},
)
ModelEntry.__doc__ = """One model of RERANKER_MODELS. Every option but `model` is optional and defaults to the
    global RERANKER_* variable of the same name."""


def _spec_name(self: Any) -> str:
    return self.names[0]


def _spec_describe(self: Any) -> str:
    """Where it loads from, for messages: ``folder '/m/x'`` or ``model 'org/x' (cache './models')``."""
    return f"folder {self.source!r}" if self.local else f"model {self.source!r} (cache {str(self.cache_dir)!r})"


def _spec_field(name: str, field: FieldInfo) -> tuple[str, Any, Any]:
    default = field.default_factory() if field.default_factory is not None else field.default  # type: ignore[call-arg]
    if isinstance(default, list):  # hashable: equal specs are merged through a dict
        return name, tuple[int, ...], dataclasses.field(default=tuple(default))
    return name, field.annotation, dataclasses.field(default=default)


# One served model, resolved: where it comes from, its names, and its own options (every
# ModelOptions field, a list as a tuple). Frozen and hashable: _merge_specs keys on it.
ModelSpec = dataclasses.make_dataclass(
    "ModelSpec",
    [
        ("names", tuple[str, ...]),  # the first is the one replies carry
        ("source", str),  # local folder or hub id
        ("local", bool),
        ("cache_dir", Path),
        ("offline", bool),
        *(_spec_field(name, field) for name, field in ModelOptions.model_fields.items()),
    ],
    namespace={"__module__": __name__, "name": property(_spec_name), "describe": _spec_describe,
               "__doc__": "One served model, resolved: where it comes from, its names, and its own options."},
    frozen=True, slots=True, kw_only=True,
)


class RaySettings(BaseModel):
    """Ray Serve (`python -m reranker_serve.ray`; HOST/PORT are where Serve's proxy listens):
    ``settings.ray.<name>``, read from RERANKER_RAY_<NAME>."""

    address: str | None = Field(
        None, description="Ray cluster to join (e.g. auto, ray://head:10001); unset: start a local one."
    )
    replicas: int = Field(
        1, ge=1, description="Replicas (each loads the model once); the start count with autoscaling."
    )
    min_replicas: int = Field(1, ge=0, description="Autoscaling floor (used when RAY_MAX_REPLICAS is set).")
    max_replicas: int = Field(0, ge=0, description="Autoscaling ceiling; 0: no autoscaling, RAY_REPLICAS fixed.")
    target_ongoing_requests: float = Field(
        2.0, gt=0, description="Autoscaling target: requests in flight per replica."
    )
    max_ongoing_requests: int = Field(
        32, ge=1, description="Most requests one replica holds at once (more wait in Serve's queue)."
    )
    num_cpus: float = Field(1.0, ge=0, description="CPUs Ray reserves per replica (ray_actor_options).")
    num_gpus: float = Field(0.0, ge=0, description="GPUs Ray reserves per replica (fractions share one GPU).")

    @field_validator("address", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @model_validator(mode="after")
    def _replica_bounds(self) -> RaySettings:
        if self.max_replicas and not self.min_replicas <= self.replicas <= self.max_replicas:
            raise ValueError(
                f"RERANKER_RAY_REPLICAS ({self.replicas}) must lie between RERANKER_RAY_MIN_REPLICAS "
                f"({self.min_replicas}) and RERANKER_RAY_MAX_REPLICAS ({self.max_replicas})"
            )
        return self


# Settings whose fields are a sub-model, each read from flat variables: RERANKER_RAY_ADDRESS is
# settings.ray.address (the variables predate the grouping and are the public contract).
_GROUPS: dict[str, type[BaseModel]] = {"ray": RaySettings}


def variable_names() -> set[str]:
    """Every RERANKER_* variable the server reads."""
    names = {ENV_PREFIX + name.upper() for name in Settings.model_fields if name not in _GROUPS}
    return names | {f"{ENV_PREFIX}{group.upper()}_{name.upper()}" for group, model in _GROUPS.items()
                    for name in model.model_fields}


class _GroupVariables(PydanticBaseSettingsSource):
    """The flat variables of the grouped settings (RERANKER_RAY_*) as found by ``source`` (the
    environment, or .env), as ``ray_<name>`` keys that Settings folds into its ``ray``."""

    def __init__(self, settings_cls: type[BaseSettings], source: Any) -> None:
        super().__init__(settings_cls)
        self.source = source

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ reads the source's variables itself

    def __call__(self) -> dict[str, Any]:
        found = {key.lower(): value for key, value in self.source.env_vars.items()}
        out: dict[str, Any] = {}
        for group, model in _GROUPS.items():
            for name in model.model_fields:
                key = f"{group}_{name}"
                if (ENV_PREFIX + key).lower() in found:
                    out[key] = found[(ENV_PREFIX + key).lower()]
        return out


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


class Settings(BaseSettings, ModelOptions):
    """Every setting: the server-wide ones below, the global value of each per-model option
    (inherited from ModelOptions: declare those there), and the Ray Serve ones as ``ray``."""

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
    device: Literal["auto", "cuda", "mps", "cpu"] = "auto"
    use_fp16: bool = Field(True, description="Half precision on CUDA (ignored on CPU/MPS).")
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
    # --- images (multimodal rerankers: media.py) ------------------------------------------------
    max_images: int = Field(64, ge=1, description="Most images one request may hold (query and documents).")
    image_max_bytes: int = Field(
        10 * 1024 * 1024, ge=1024, description="Largest image file (base64-decoded or fetched); larger ones get 413."
    )
    image_max_pixels: int = Field(
        25_000_000, ge=1, description="Most pixels (width x height) an image may declare, read from its header before "
        "anything is decoded (decompression bombs); the model's processor then resizes it to the model's own bounds.",
    )
    image_url_allowlist: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Hosts whose http(s) image URLs the server fetches (comma-separated; "
        "`*.example.com`: its subdomains; `*`: any host, letting clients make the server fetch any URL); empty: image "
        "URLs are refused (send base64).",
    )
    image_fetch_timeout: float = Field(10.0, gt=0, le=300, description="Seconds an image URL has to deliver the image.")

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

    # --- Ray Serve: RERANKER_RAY_* (RaySettings) -------------------------------------------
    ray: RaySettings = Field(default_factory=RaySettings, description="Ray Serve deployment (RERANKER_RAY_*).")

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

    _normalise_choice = field_validator("device", "unknown_model", mode="before")(_choice)

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

    @field_validator("image_url_allowlist", mode="before")
    @classmethod
    def _split_image_hosts(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        hosts = [h.strip().lower() for h in value.split(",") if h.strip()]
        for host in hosts:
            if "/" in host or ":" in host.strip("[]") and not host.startswith("["):
                raise ValueError(f"{host!r} is not a host name: list hosts only (images.example.com, *.example.com "
                                 "or *), without scheme, port or path")
        return hosts

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
        # `RERANKER_OTLP_ENDPOINT=` in a .env: no tracing. The URL and the installed exporter are
        # tracing's to check (bootstrap.start_up_settings).
        return value.strip() or None

    @field_validator("api_keys", "metrics_port", "instance_id", "served_model_name", "model_path", "instruction", "cutoff_layer", mode="before")
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

    @model_validator(mode="before")
    @classmethod
    def _group(cls, data: Any) -> Any:
        """``ray_address=...`` (a flat variable, or a keyword as tests and scripts pass them) is
        ``ray.address``: the grouped settings keep their flat names."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for group in _GROUPS:
            flat = {key[len(group) + 1:]: data.pop(key) for key in list(data) if key.startswith(f"{group}_")}
            if flat:
                given = data.get(group)
                given = given.model_dump(exclude_unset=True) if isinstance(given, BaseModel) else dict(given or {})
                data[group] = {**flat, **given}
        return data

    @classmethod
    def settings_customise_sources(
        cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource, dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The grouped settings' flat variables, each right after the source it is read from, so
        # the usual order holds for them too: keywords, then the environment, then .env.
        return (init_settings, env_settings, _GroupVariables(settings_cls, env_settings), dotenv_settings,
                _GroupVariables(settings_cls, dotenv_settings), file_secret_settings)

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
        inherit = {key: getattr(self, key) for key in _PER_MODEL}  # ModelOptions' fields
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
        if loc and loc[0] in _GROUPS:  # ("ray", "num_gpus") is RERANKER_RAY_NUM_GPUS
            loc = (f"{loc[0]}_{loc[1]}", *loc[2:]) if len(loc) > 1 else ()
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
