"""The engine: one loaded model plus the batcher that feeds it (one engine per served model).

It knows nothing about HTTP. ``score()`` tokenizes off the event loop, queues the pairs and
returns raw logits with token counts; the service turns those into ranked results.
"""

from __future__ import annotations

import math
import struct
import threading
import time
from dataclasses import dataclass, replace
from typing import Callable, Iterable, Sequence, TypeVar

import anyio
import torch
from loguru import logger

from .batcher import Batcher
from .config import ModelSpec, Settings
from .device import Placement, configure_cpu_threads, resolve_placement
from .models import EncodeOptions, Pair, ScoringModel, load_model

__all__ = ["Engine", "EngineScores", "token_cost"]


@dataclass(frozen=True, slots=True)
class EngineScores:
    """One engine call (``Engine.run``): what it returned, what it cost, when it ran."""

    raw: list[float]  # per document: its best window's logit
    tokens: int  # tokens actually fed to the model, special tokens included (token_cost)
    queue_time: float  # seconds, the batcher's split of the call
    inference_time: float
    # Wall clock (time.time_ns) around the call: its place in a trace (tracing.py).
    started_ns: int
    ended_ns: int


def token_cost(pairs: Iterable[Pair]) -> int:
    """What computing ``pairs`` costs, in model tokens (special tokens included): the one count
    behind the token cap, key limits, usage, the cache's cached cost and the tokens metric."""
    return sum(len(pair) for pair in pairs)


_INLINE_TOKENIZE_CHARS = 4096
# The document of the first pass (warm_up), whose exact logit (with the model's description,
# cache.py) fingerprints the weights: any change of weights moves it.
_PROBE = "the engine is warming up"
# Below this (seconds per new batch shape) preparation is not worth a start-up sweep, whatever
# the compute: timing noise on a busy machine is of this order.
_NEGLIGIBLE_PREPARATION = 0.0005
# CPU batches that compute faster than this (seconds) are launched ahead, two in flight.
_LAUNCH_AHEAD_BELOW = 0.05
T = TypeVar("T")


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


def default_batch_tokens(device: str) -> int:
    # Measured (docs/benchmarks.md): on CPU, 1k-token batches beat 2k by ~8% in the server (fewer
    # padded tokens: the queue rarely holds many pairs of one length) and 8k by ~15-50%
    # (activations stay in cache). A GPU wants large batches to fill its cores: on an H100 the
    # padded forward pass ran 1,905 pairs/s at 16k tokens and 2,048 at 32k, and the server
    # 1,234 vs 1,004 (the issue on the GPU engine).
    return 32768 if device.startswith("cuda") else 1024


def default_batch_size(device: str) -> int:
    # On a GPU the token budget governs: 32k tokens of 32-token pairs is 1,024 pairs. On the CPU
    # 32 pairs was measured best (docs/benchmarks.md).
    return 1024 if device.startswith("cuda") else 32


def _serialised(call: Callable[[Sequence[Pair]], T], lock: threading.Lock | None) -> Callable[[Sequence[Pair]], T]:
    if lock is None:
        return call

    def run(batch: Sequence[Pair]) -> T:
        with lock:
            return call(batch)

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
        # The exact logit of the probe pair (warm_up): the same weights give the same bytes in
        # every replica, so the score cache on Redis can be shared by them (cache.py). None: not
        # measured (an engine built around a model in tests), no shared cache for it.
        self.fingerprint: bytes | None = None
        # On a GPU, and with a runner that computes asynchronously (OpenVINO), the batcher keeps
        # two batches in flight: launched, then collected. Not an asynchronous CPU runner beside
        # other models (a device lock): the lock would cover only the launch, and two models would
        # compute at once on the same cores; synchronous passes hold it to the end.
        asynchronous = model.device.startswith("cuda") or (model.asynchronous and device_lock is None)
        launch = model.launch if asynchronous else None
        self.batcher = Batcher(
            _serialised(model.forward, device_lock),
            launch=_serialised(launch, device_lock) if launch is not None else None,
            depth=2 if launch is not None else 1,
            # On the CPU the pipeline pays where batches are short (a small model: the ~1 ms between
            # two is 10-20% of a batch); a long one would only delay an interactive request.
            ahead_below=None if model.device.startswith("cuda") else _LAUNCH_AHEAD_BELOW,
            max_batch_tokens=self.spec.max_batch_tokens or default_batch_tokens(model.device),
            max_batch_size=self.spec.batch_size or default_batch_size(model.device),
            padded=model.padded,
            max_queue=self.spec.max_queue,
            batch_wait=settings.batch_wait_ms / 1000.0,
            is_oom=_is_oom,
            batch_max_wait=settings.batch_max_wait,
            batch_queue_share=settings.batch_queue_share,
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
            "{} ready in {:.1f} s: {} reranker on {} ({}, {}, {} attention), max_length {}",
            model.name, engine.load_seconds, model.family, model.device, model.dtype_name, model.backend,
            model.attention, model.max_length,
        )
        return engine

    def warm_up(self) -> None:
        """Pay for kernel preparation and allocator growth here, not in the first clients' latency.

        One small pass always. Beyond it, within ``RERANKER_WARMUP_SECONDS``: on a GPU every
        power-of-two pair length up to max_length at the full batch budget (the largest
        activations the server will allocate, and each length's GEMM heuristics); on the CPU the
        batch shapes themselves, where a first sight of a shape costs preparation (``_warm_shapes``).
        """
        pairs = self.model.encode("warm up", [_PROBE], self.encode_options())
        self.fingerprint = struct.pack(f"<{len(pairs)}d", *self.model.forward(pairs))
        budget = self.settings.warmup_seconds
        if budget <= 0:
            return
        text = " ".join(["warm"] * 2 * self.model.max_length)  # longer than any window: cut to each length
        if not self.model.device.startswith("cuda"):
            self._warm_shapes(budget, text)
            return
        started = time.perf_counter()
        length = 32
        while length <= self.model.max_length and time.perf_counter() - started < budget:
            try:
                pair = self.model.encode("warm up", [text], self.encode_options(max_length=length))[:1]
            except Exception:  # a prompt longer than this length: start at a longer one
                length *= 2
                continue
            self.model.forward(pair * self._full_batch(len(pair[0])))
            length *= 2
        torch.cuda.synchronize()
        logger.info("{}: warmed up over pair lengths 32..{} in {:.1f} s", self.model.name,
                    min(length // 2, self.model.max_length), time.perf_counter() - started)

    def _full_batch(self, length: int) -> int:
        """Pairs in a padded batch of pairs ``length`` tokens long when the queue is deep (the budget's cap)."""
        return max(1, min(self.batcher.max_batch_size, self.batcher.max_batch_tokens // max(1, length)))

    def _warm_shapes(self, budget: float, text: str) -> None:
        """CPU: run each batch shape the batcher forms under load once, if new shapes cost much.

        OpenVINO (and oneDNN under torch) prepare kernels for every new input shape and keep
        them. Measured on this project's 2-core CPU: on xlmr-mini (2 layers) a (pairs, length)
        shape seen the first time took 3-5 ms more than its 2-7 ms pass, so a fresh server ran
        a 32 x 20 load 20-30% slower than one that had seen the shapes; on bge-reranker-base
        the same cost is 1-4% of a pass. So two fresh shapes are timed, then seen again; only
        where preparation costs more than a tenth of the compute (and over 0.5 ms a shape)
        does every length get its full batch (length x the budget's pair cap), shortest first,
        within ``budget`` seconds.
        """
        if not self.model.padded:
            return  # packed batches are one (1, tokens) sequence: no fixed set of shapes to warm
        full = self.model.encode("warm up", [text], self.encode_options())[0]
        if full.shared or full.before_doc or full.after_doc:
            return  # prompt templates (LLM rerankers): large models, where preparation is negligible
        shortest = len(self.model.encode("q", ["d"], self.encode_options())[0])

        def shape(length: int, pairs: int) -> float:
            batch = [replace(full, ids=full.ids[:length],
                             type_ids=full.type_ids[:length] if full.type_ids else None)] * pairs
            started = time.perf_counter()
            self.model.forward(batch)
            return time.perf_counter() - started

        started = time.perf_counter()
        probes = [(min(61, len(full)), 3), (min(47, len(full)), 5)]  # unlikely to have been seen yet
        first = sum(shape(length, pairs) for length, pairs in probes)
        again = sum(shape(length, pairs) for length, pairs in probes)
        preparation = first - again
        if preparation <= max(0.1 * again, _NEGLIGIBLE_PREPARATION * len(probes)):
            logger.debug("{}: a new batch shape costs {:.1f} ms of preparation beside {:.1f} ms of compute: no shape "
                         "warm-up", self.model.name, 1000 * preparation / 2, 1000 * again / 2)
            return
        length = shortest
        while length <= len(full) and time.perf_counter() - started < budget:
            shape(length, self._full_batch(length))
            length += 1
        logger.info("{}: a new batch shape costs ~{:.1f} ms of preparation beside {:.1f} ms of compute; warmed the "
                    "full batches of pair lengths {}..{} in {:.1f} s (RERANKER_WARMUP_SECONDS={:g})", self.model.name,
                    1000 * preparation / 2, 1000 * again / 2, shortest, length - 1, time.perf_counter() - started,
                    budget)

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

    async def score(self, query: str, documents: Sequence[str], options: EncodeOptions, *,
                    priority: str = "interactive") -> EngineScores:
        return await self.run(await self.encode(query, documents, options), len(documents), priority=priority)

    async def encode(self, query: str, documents: Sequence[str], options: EncodeOptions) -> list[Pair]:
        """The pairs of ``documents`` (several per chunked document; ``pair.doc`` says whose)."""
        if len(query) + sum(len(d) for d in documents) <= _INLINE_TOKENIZE_CHARS:
            # A few short texts tokenize in tens of microseconds: less than the hop to a thread.
            return self.model.encode(query, documents, options)
        return await anyio.to_thread.run_sync(self.model.encode, query, documents, options)

    async def run(self, pairs: Sequence[Pair], documents: int, *, priority: str = "interactive") -> EngineScores:
        """Queue ``pairs`` and return the raw score of each of the ``documents`` they belong to
        (-inf for a document without pairs here)."""
        started = time.time_ns()  # two clock reads (~50 ns): the call's place in a trace
        scored = await self.batcher.submit(pairs, timeout=self.settings.request_timeout, priority=priority)
        # A chunked document scores as its best window (the activation is monotonic, so the
        # best logit is the best score).
        raw = [-math.inf] * documents
        for pair, score in zip(pairs, scored.scores):
            raw[pair.doc] = max(raw[pair.doc], score)
        return EngineScores(
            raw=raw,
            tokens=token_cost(pairs),
            queue_time=scored.queue_time,
            inference_time=scored.inference_time,
            started_ns=started,
            ended_ns=time.time_ns(),
        )
