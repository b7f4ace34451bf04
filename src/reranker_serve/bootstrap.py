"""Process start-up, in one place: what every process that serves does before it builds the
app (the CLI, each uvicorn worker, the Ray driver and each Ray replica), and the checks of the
settings whose owners load what they name.

Order matters: the offline environment first (huggingface_hub reads HF_HUB_OFFLINE when it is
first imported), then logging (which imports the Hugging Face libraries to route their loggers).
"""

from __future__ import annotations

import logging
import os

from .calibration import read_calibration
from .config import ConfigError, Settings, load_settings
from .keys import KeyRing
from .tracing import check_endpoint, check_protocol

__all__ = ["apply_offline_environment", "check_owned_settings", "route_library_logging", "set_up_process",
           "start_up_settings"]


def apply_offline_environment(*, offline: bool) -> None:
    """Offline mode: make every Hugging Face library refuse the network, not just our calls;
    and in any mode: no hub telemetry, no progress bars in a server's log.

    huggingface_hub reads these variables when it is first imported, so this runs before the
    model libraries are imported (``set_up_process``) and again before loading (harmless twice).
    """
    if offline:
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def route_library_logging() -> None:
    """The Hugging Face libraries' messages through the one log sink, and no progress bars.

    Libraries that give their logger a stderr handler of their own would print each line twice
    (once raw, once through our sink): huggingface_hub's retry warnings, transformers' messages.
    They add that handler when first imported, so import them first (after the offline
    environment is set). A server's log is lines, not progress bars (they would break JSON logs).
    """
    import huggingface_hub.utils.logging  # noqa: F401
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.disable_default_handler()
    hf_logging.enable_propagation()
    for name in ("huggingface_hub", "transformers", "sentence_transformers"):
        lib = logging.getLogger(name)
        lib.handlers = []
        lib.propagate = True


def set_up_process(settings: Settings) -> None:
    """Offline environment, then logging (ours, uvicorn's, the libraries'), for this process."""
    apply_offline_environment(offline=settings.use_offline_mode)
    from .observability import configure_logging

    configure_logging(level=settings.log_level, fmt=settings.log_format)
    route_library_logging()


def check_owned_settings(settings: Settings) -> KeyRing:
    """The settings config.py checks only the syntax of, checked by their owners: the key file
    (read and parsed once, by the KeyRing returned), the OpenTelemetry exporter and the int8
    calibration file. ConfigError
    with one line naming the variable."""
    if settings.otlp_endpoint is not None:
        try:
            check_endpoint(settings.otlp_endpoint)
        except ValueError as exc:
            raise ConfigError(
                f"invalid configuration: RERANKER_OTLP_ENDPOINT: {exc} (got {settings.otlp_endpoint!r})") from None
        try:
            check_protocol(settings.otlp_protocol, endpoint=settings.otlp_endpoint)
        except ValueError as exc:
            raise ConfigError(f"invalid configuration: RERANKER_OTLP_PROTOCOL: {exc}") from None
    for spec in settings.model_specs:
        if spec.quantize_calibration is not None:
            try:
                read_calibration(spec.quantize_calibration)  # read again where a model quantizes
            except ValueError as exc:
                raise ConfigError(f"invalid configuration: RERANKER_QUANTIZE_CALIBRATION: {exc}") from None
    try:
        return KeyRing(settings.api_keys, single_key=settings.api_key)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"invalid configuration: RERANKER_API_KEYS: {exc}") from None


def start_up_settings(**overrides: object) -> Settings:
    """Settings as a serving process starts with them: ``load_settings`` (syntax), then the
    owners' checks. ConfigError with one clear line."""
    settings = load_settings(**overrides)
    check_owned_settings(settings)
    return settings
