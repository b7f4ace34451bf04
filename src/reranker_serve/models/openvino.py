"""OpenVINO runtime for cross-encoders on the CPU (RERANKER_BACKEND=auto|openvino).

The same model, tokenization and scores as the torch path (encoder.py), with the forward pass
run by OpenVINO (a ``Runner`` the reranker holds; whether it serves, after its start-up check
against torch, is decided beside the attention choice in encoder.py's ``use_openvino``): converted once at start-up from the loaded transformers model, compiled for
the CPU in the placement's precision (bf16 where the CPU has bf16 hardware, else f32). On a
2-core AVX512-BF16 machine it ran bge-reranker-base 1.4x faster than torch bf16 at the same
drift, mostly from fused attention (docs/benchmarks.md).

``import openvino`` sends a usage event to Google Analytics (and conversion sends more) unless
the user has opted out on that machine. A server must not phone home, so openvino is only ever
imported through ``_openvino()``, which hides the telemetry package for the import: OpenVINO
then binds its built-in no-op stub for good (tests/test_operations.py checks no outside
connection is opened).
"""

from __future__ import annotations

import sys
import time
import warnings
from collections import deque
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence

import torch
from loguru import logger

from .base import Pair
from .runners import Feed, Runner, padded_inputs

__all__ = ["OpenVINORunner", "compile_for_cpu", "convert_to_openvino", "import_openvino", "openvino_available",
           "to_openvino", "without_telemetry"]

_PRECISION = {torch.bfloat16: "bf16", torch.float16: "f16", torch.float32: "f32"}


@contextmanager
def without_telemetry() -> Iterator[None]:
    """Imports inside see no ``openvino_telemetry``: OpenVINO (and NNCF, which sends its own usage
    events through the same package) then bind their no-op stubs for good."""
    hidden = sys.modules.get("openvino_telemetry", ...)
    sys.modules["openvino_telemetry"] = None  # type: ignore[assignment]  # its import fails: the stub is used
    try:
        yield
    finally:
        if hidden is ...:
            del sys.modules["openvino_telemetry"]
        else:
            sys.modules["openvino_telemetry"] = hidden


def _openvino() -> Any:
    """``import openvino``, with its telemetry replaced by OpenVINO's own no-op stub."""
    if "openvino" in sys.modules:
        return sys.modules["openvino"]
    with without_telemetry():
        import openvino
    return openvino


import_openvino = _openvino  # for the modules beside this one (quantize.py): the one way to import it


def openvino_available() -> bool:
    try:
        _openvino()
    except ImportError:
        return False
    return True


class _StartedBatch:
    """One batch started on an infer request; ``logits()`` waits for it and copies the result out."""

    __slots__ = ("request", "output")

    def __init__(self, request: Any, output: torch.Tensor | None = None) -> None:
        self.request = request
        self.output = output  # set: collected (or, for a request not used yet, nothing to collect)

    def logits(self) -> torch.Tensor:
        if self.output is None:
            self.request.wait()  # releases the GIL
            # Copied: the request's output buffer is reused by the batch after next.
            self.output = torch.from_numpy(self.request.get_output_tensor(0).data.copy())
        return self.output


class OpenVINORunner(Runner):
    """The padded inputs of a batch through an OpenVINO compiled model, two batches in flight.

    Two infer requests take turns: batch n+1 is started (queued behind batch n on OpenVINO's one
    stream) before batch n's scores are collected, so the cores go from one batch to the next
    without waiting for Python. In a busy server the batcher thread's turn at the GIL (the event
    loop and tokenizer threads hold it too) took ~1 ms per batch, 15% of a small model's pass
    (docs/benchmarks.md); started ahead, that wait overlaps the computation instead. Calls come
    from one thread at a time (the batcher's, or start-up's).
    """

    backend = "openvino"
    asynchronous = True

    def __init__(self, compiled: Any, feed: Feed, *, dtype: torch.dtype, precision: str | None = None) -> None:
        # The last batch of each request, oldest first (idle requests to begin with).
        self._batches = deque(_StartedBatch(compiled.create_infer_request(), torch.empty(0)) for _ in range(2))
        self._inputs = {port.get_any_name() for port in compiled.inputs}
        self.feed = feed
        self.device = "cpu"
        self.dtype = dtype
        self.precision = precision  # None: the dtype's name

    @property
    def dtype_name(self) -> str:
        return self.precision or super().dtype_name

    def start(self, batch: Sequence[Pair]) -> Callable[[], torch.Tensor]:
        inputs = padded_inputs(batch, self.feed, device="cpu")
        oldest = self._batches.popleft()
        oldest.logits()  # its result is kept before its request is reused
        oldest.request.start_async({k: v.numpy() for k, v in inputs.items() if k in self._inputs}, share_inputs=False)
        started = _StartedBatch(oldest.request)
        self._batches.append(started)
        return started.logits

    def logits(self, batch: Sequence[Pair]) -> torch.Tensor:
        return self.start(batch)()


def _mask_seeing_itself(**kwargs: Any) -> torch.Tensor | None:
    """transformers' SDPA mask, with each query position also seeing its own key.

    With local (sliding-window) attention, a padding position further than half the window from
    every real token sees no key at all: its softmax row is all -inf. torch's SDPA returns zeros
    for such a row; OpenVINO's returns NaN, and NaN in a padding row's values reaches every real
    row through the next layer (0 x NaN is NaN), and ModernBERT's mean pooling. A padding query
    that sees itself is finite; real rows already see themselves, so their results do not change.
    """
    from transformers.masking_utils import sdpa_mask

    mask = sdpa_mask(**kwargs)
    if mask is None or mask.shape[-2] != mask.shape[-1]:
        return mask
    # Built from the traced shape (not torch.eye of a Python int) so it stays dynamic in the graph.
    index = torch.arange(mask.shape[-1], device=mask.device)
    return mask | (index[:, None] == index[None, :])


_TRACED = "reranker_openvino_sdpa"


@contextmanager
def _finite_padding_rows(config: Any) -> Iterator[None]:
    """For the trace only: SDPA attention with ``_mask_seeing_itself`` as its mask (models built on SDPA)."""
    if config._attn_implementation != "sdpa":
        yield
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    AttentionInterface.register(_TRACED, ALL_ATTENTION_FUNCTIONS["sdpa"])
    ALL_MASK_ATTENTION_FUNCTIONS.register(_TRACED, _mask_seeing_itself)
    config._attn_implementation = _TRACED
    try:
        yield
    finally:
        config._attn_implementation = "sdpa"


def convert_to_openvino(model: Any, feed: Feed) -> Any:
    """A loaded (float32) torch sequence classifier as an OpenVINO model (not compiled yet)."""
    ov = _openvino()
    # A padded example: an all-ones mask lets transformers trace a graph that drops the mask.
    mask = torch.ones((2, 8), dtype=torch.long)
    mask[1, 5:] = 0
    example = {"input_ids": torch.ones((2, 8), dtype=torch.long), "attention_mask": mask}
    if feed.with_types:
        example["token_type_ids"] = torch.zeros((2, 8), dtype=torch.long)
    # Tracing warns that shape checks become constants; they hold for every padded batch we send.
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings(), _finite_padding_rows(model.config):
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        return ov.convert_model(
            model, example_input=example, input=[(key, [-1, -1], ov.Type.i64) for key in example]
        )


def compile_for_cpu(converted: Any, feed: Feed, *, dtype: torch.dtype, threads: int,
                    precision: str | None = None) -> OpenVINORunner:
    """Compile an OpenVINO model for the CPU, its float operations in ``dtype``'s precision.

    ``precision``: what /info calls it when that is not ``dtype`` (an int8 model: "int8").
    """
    config = {
        "INFERENCE_PRECISION_HINT": _PRECISION.get(dtype, "f32"),
        "PERFORMANCE_HINT": "LATENCY",  # one stream: the batcher runs one batch at a time
        "NUM_STREAMS": "1",
        "INFERENCE_NUM_THREADS": str(threads),
    }
    compiled = _openvino().Core().compile_model(converted, "CPU", config)
    return OpenVINORunner(compiled, feed, dtype=dtype, precision=precision)


def to_openvino(model: Any, feed: Feed, *, dtype: torch.dtype, threads: int, name: str) -> OpenVINORunner:
    """Convert a loaded (float32) torch sequence classifier and compile it for the CPU."""
    started = time.perf_counter()
    runner = compile_for_cpu(convert_to_openvino(model, feed), feed, dtype=dtype, threads=threads)
    logger.info("converted {} to OpenVINO ({}) in {:.1f} s", name, _PRECISION.get(dtype, "f32"),
                time.perf_counter() - started)
    return runner
