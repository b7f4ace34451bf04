"""The engine: one loaded model plus the batcher that feeds it (one engine per served model).

It knows nothing about HTTP. ``score()`` tokenizes off the event loop, queues the pairs and
returns raw logits with token counts; the service turns those into ranked results.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from typing import Sequence

import anyio
import torch
from loguru import logger

from .batcher import Batcher, Forward
from .config import ModelSpec, Settings
from .device import Placement, configure_cpu_threads, resolve_placement
from .models import EncodeOptions, Pair, ScoringModel, load_model

__all__ = ["Engine", "EngineScores"]


@dataclass(frozen=True, slots=True)
class EngineScores:
    raw: list[float]
    tokens: int  # tokens actually fed to the model, special tokens included
    queue_time: float
    inference_time: float


_INLINE_TOKENIZE_CHARS = 4096


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


def default_batch_tokens(device: str) -> int:
    # Measured (docs/benchmarks.md): on CPU, 1k-token batches beat 2k by ~8% in the server (fewer
    # padded tokens: the queue rarely holds many pairs of one length) and 8k by ~15-50%
    # (activations stay in cache); a GPU wants large batches to fill its cores.
    return 16384 if device.startswith("cuda") else 1024


def _serialised(forward: Forward, lock: threading.Lock) -> Forward:
    def run(batch: Sequence[Pair]) -> list[float]:
        with lock:
            return forward(batch)

    return run


class Engine:
    """One served model (``spec``, default: the first of the settings) and its own batcher.

    Engines of several models share ``device_lock``: two forward passes at once on the same
    cores or GPU only slow each other down, so they take turns.
    """

    def __init__(self, model: ScoringModel, settings: Settings, spec: ModelSpec | None = None, *,
                 load_seconds: float = 0.0, device_lock: threading.Lock | None = None) -> None:
        self.model = model
        self.settings = settings
        self.spec = spec or settings.model_specs[0]
        self.load_seconds = load_seconds
        forward = model.forward if device_lock is None else _serialised(model.forward, device_lock)
        self.batcher = Batcher(
            forward,
            max_batch_tokens=self.spec.max_batch_tokens or default_batch_tokens(model.device),
            max_batch_size=self.spec.batch_size,
            max_queue=self.spec.max_queue,
            batch_wait=settings.batch_wait_ms / 1000.0,
            is_oom=_is_oom,
        )

    @classmethod
    def load(cls, settings: Settings, spec: ModelSpec | None = None, *, placement: Placement | None = None,
             device_lock: threading.Lock | None = None) -> Engine:
        """Resolve device and dtype, load the model, warm it up. Blocking: run it in a thread."""
        spec = spec or settings.model_specs[0]
        placement = placement or resolve_placement(device=settings.device, dtype=spec.dtype, use_fp16=settings.use_fp16)
        if placement.device == "cpu":
            threads = configure_cpu_threads(settings.num_threads)
            logger.info("CPU inference with {} torch threads", threads)
        started = time.perf_counter()
        logger.info("loading {} from {} on {} ({})", spec.name, spec.describe(), placement.device, placement.dtype_name)
        model = load_model(spec, placement)
        engine = cls(model, settings, spec, load_seconds=time.perf_counter() - started, device_lock=device_lock)
        engine.warm_up()
        engine.load_seconds = time.perf_counter() - started
        logger.info(
            "{} ready in {:.1f} s: {} reranker on {} ({}, {}), max_length {}",
            model.name, engine.load_seconds, model.family, model.device, model.dtype_name, model.backend,
            model.max_length,
        )
        return engine

    def warm_up(self) -> None:
        # The first forward pass pays for kernel selection and allocator growth; pay it here,
        # not in the first client's latency.
        pairs = self.model.encode("warm up", ["the engine is warming up"], self.encode_options())
        self.model.forward(pairs)

    def start(self) -> None:
        self.batcher.start()

    def stop(self) -> None:
        self.batcher.close()

    def encode_options(self, **overrides: object) -> EncodeOptions:
        values: dict[str, object] = {
            "max_length": self.model.max_length,
            "max_chunks": self.settings.max_chunks_per_doc,
            "chunk_overlap": self.settings.chunk_overlap,
        }
        values.update(overrides)
        return EncodeOptions(**values)  # type: ignore[arg-type]

    async def score(self, query: str, documents: Sequence[str], options: EncodeOptions) -> EngineScores:
        if len(query) + sum(len(d) for d in documents) <= _INLINE_TOKENIZE_CHARS:
            # A few short texts tokenize in tens of microseconds: less than the hop to a thread.
            pairs = self.model.encode(query, documents, options)
        else:
            pairs = await anyio.to_thread.run_sync(self.model.encode, query, documents, options)
        scored = await self.batcher.submit(pairs, timeout=self.settings.request_timeout)
        # A chunked document scores as its best window (the activation is monotonic, so the
        # best logit is the best score).
        raw = [-math.inf] * len(documents)
        for pair, score in zip(pairs, scored.scores):
            raw[pair.doc] = max(raw[pair.doc], score)
        return EngineScores(
            raw=raw,
            tokens=sum(len(p) for p in pairs),
            queue_time=scored.queue_time,
            inference_time=scored.inference_time,
        )
