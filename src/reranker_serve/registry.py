"""The served models and their lifecycle; the one owner of "which engine answers this request".

Every served model (a ``ModelSpec`` of the settings) goes through::

    loading ──► ready     its engine serves requests
       └──────► failed    the error is kept: /ready reports it, requests get 503 saying it

``/ready``, ``/info``, ``/v1/models`` and the service ask this registry; nothing else reads or
writes engines or load errors.

Which model a request's ``model`` selects (``RERANKER_UNKNOWN_MODEL``):

    none / blank            the default (first) model
    a served name or alias  that model
    any other name          auto:    the default model when only one is served (clients send
                                     their vendor's names: rerank-v3.5, jina-reranker-v2-...),
                                     else 404 listing the served names and how to fix it
                            default: the default model
                            error:   404 listing the served names
"""

from __future__ import annotations

import enum
import threading
from functools import partial
from typing import Callable, Sequence

import anyio
from loguru import logger

from .config import ModelSpec, Settings
from .engine import Engine
from .errors import ErrorKind, RerankError
from .observability import Metrics

__all__ = ["ModelRegistry", "ModelState"]


class ModelState(str, enum.Enum):
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"


class ModelRegistry:
    """The models of ``settings`` (default first), their engines once loaded, and the name policy."""

    def __init__(self, settings: Settings, engines: Sequence[Engine] = (), *, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.specs: tuple[ModelSpec, ...] = tuple(settings.model_specs)
        self.default = self.specs[0]
        self._by_name = {name: spec for spec in self.specs for name in spec.names}
        self._engines: dict[str, Engine] = {}  # by the spec's first name
        self._errors: dict[str, str] = {}
        for engine in engines:
            self._attach(engine)

    # -- state ------------------------------------------------------------------------------------
    def state(self, spec: ModelSpec) -> ModelState:
        if spec.name in self._engines:
            return ModelState.READY
        return ModelState.FAILED if spec.name in self._errors else ModelState.LOADING

    def error(self, spec: ModelSpec) -> str | None:
        return self._errors.get(spec.name)

    def engine_of(self, spec: ModelSpec) -> Engine | None:
        """The loaded engine of ``spec``, or None while it is loading or after it failed."""
        return self._engines.get(spec.name)

    def engines(self) -> list[Engine]:
        return list(self._engines.values())

    @property
    def ready(self) -> bool:
        return all(self.state(spec) is ModelState.READY for spec in self.specs)

    @property
    def load_error(self) -> str | None:
        """The first load failure, if any model failed."""
        return next((self._errors[s.name] for s in self.specs if s.name in self._errors), None)

    # -- names ------------------------------------------------------------------------------------
    def resolve(self, model: str | None) -> ModelSpec:
        """The served model a request's `model` selects (see the module docstring)."""
        if model is None or not model.strip():
            return self.default
        spec = self._by_name.get(model)
        if spec is not None:
            return spec
        policy = self.settings.unknown_model
        if policy == "default" or (policy == "auto" and len(self.specs) == 1):
            return self.default
        served = ", ".join(repr(n) for spec in self.specs for n in spec.names)
        fix = (
            f"; to accept it, add it as an alias in RERANKER_MODELS (e.g. '{model}=<model id or folder>'), "
            f"or set RERANKER_UNKNOWN_MODEL=default to let the default model {self.default.name!r} answer any name"
        )
        raise RerankError(ErrorKind.MODEL_NOT_FOUND, f"model {model!r} is not served here; served models: {served}{fix}")

    def engine(self, model: str | None) -> Engine:
        """The engine that answers a request naming ``model``; 404 or 503 when there is none."""
        spec = self.resolve(model)
        engine = self._engines.get(spec.name)
        if engine is not None:
            return engine
        error = self._errors.get(spec.name)
        if error:
            raise RerankError(ErrorKind.NOT_READY, f"the model failed to load: {error}")
        raise RerankError(ErrorKind.NOT_READY, f"the model {spec.name!r} is still loading; retry shortly", retry_after=5)

    # -- lifecycle --------------------------------------------------------------------------------
    def _attach(self, engine: Engine) -> None:
        name = engine.spec.name
        engine.batcher.on_batch = lambda pairs, tokens: self.metrics.observe_batch(name, pairs, tokens)
        self.metrics.queue_depth.labels(name).set_function(lambda: engine.batcher.queued_pairs)
        self.metrics.model_load.labels(name).set(engine.load_seconds)
        engine.start()
        self._engines[name] = engine

    async def load(self, *, on_failure: Callable[[str], None] | None = None) -> None:
        """Load every model not loaded yet, one after the other; stop at the first failure."""
        # Every model runs on the same device: with several, one forward pass at a time.
        device_lock = threading.Lock() if len(self.specs) > 1 else None
        for spec in self.specs:
            if self.state(spec) is not ModelState.LOADING:
                continue
            try:
                load = partial(Engine.load, self.settings, spec, device_lock=device_lock)
                engine = await anyio.to_thread.run_sync(load, abandon_on_cancel=True)
            except Exception as exc:  # ModelLoadError, ConfigError, or anything a library raised
                self._errors[spec.name] = str(exc)
                logger.error("model {} failed to load: {}", spec.name, exc)
                if on_failure is not None:
                    on_failure(str(exc))
                return
            self._attach(engine)

    async def close(self) -> None:
        for engine in self.engines():
            await anyio.to_thread.run_sync(engine.stop)
