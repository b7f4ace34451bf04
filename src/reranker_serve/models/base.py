"""What the engine needs from a model family, whatever its architecture.

A family turns (query, documents) into token pairs (``encode``), a batch of pairs into one raw
score per pair (``forward``), and a raw score into a relevance score (``activate``). The
activation lives in the family, once, so ``raw_scores`` is simply "skip activate".
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import chain
from typing import Any, Callable, Iterable, Literal, Mapping, Protocol, Sequence

import numpy as np
import torch

__all__ = [
    "EncodeOptions", "Pair", "Pending", "ScoringModel", "pad", "padded_layout", "scatter_rows", "sigmoid", "to_device", "windows",
]


@dataclass(frozen=True, slots=True)
class Pair:
    """One tokenized (query, document) input, ready to be padded into a batch."""

    ids: list[int]
    type_ids: list[int] | None = None
    doc: int = 0  # the request's document this pair scores (several pairs when chunked)
    # Tokens before and after the segment that holds the document (prompt templates only; the
    # lightweight LLM reranker compresses what lies between them).
    before_doc: int = 0
    after_doc: int = 0
    # Leading tokens every pair of its request begins with (decoder rerankers compute them once).
    shared: int = 0
    # Multimodal rerankers (vision.py): each image's (pixel patches, grid) from the model's image
    # processor, in prompt order; its tokens are already counted in ``ids``.
    media: tuple[tuple[Any, Any], ...] = ()

    def __len__(self) -> int:
        return len(self.ids)


@dataclass(frozen=True, slots=True, kw_only=True)
class EncodeOptions:
    """How to fit a pair into the model's window.

    truncate=False makes an over-long pair an error instead (TEI's `truncate: false`).
    truncation_direction says which end of the document (and, when it must, the query) is cut.
    max_doc_tokens caps each document before the window is applied (Cohere v2).
    max_chunks > 1 splits a document too long for the window into up to that many windows
    overlapping by chunk_overlap tokens, each scored beside the query (Cohere v1's
    max_chunks_per_doc); the document's score is the best window's.
    """

    max_length: int
    truncate: bool = True
    truncation_direction: Literal["right", "left"] = "right"
    max_doc_tokens: int | None = None
    max_chunks: int = 1
    chunk_overlap: int = 0
    instruction: str | None = None  # None: the model's default (families that take one)


def windows(ids: list[int], size: int, *, max_chunks: int, overlap: int) -> list[list[int]]:
    """Up to max_chunks windows of ``size`` tokens, each starting ``size - overlap`` after the last."""
    if len(ids) <= size or max_chunks <= 1:
        return [ids[:size]]
    step = max(1, size - min(overlap, size // 2))
    out = []
    for start in range(0, len(ids), step):
        out.append(ids[start : start + size])
        if len(out) == max_chunks or start + size >= len(ids):
            break
    return out


class ScoringModel(Protocol):
    name: str
    family: str  # encoder, qwen3, qwen3-seq-cls, llm, layerwise, lightweight
    backend: str  # torch or openvino
    backend_note: str  # why this backend, when it is not the obvious one ("" otherwise)
    device: str
    dtype_name: str
    max_length: int  # most tokens per pair the model accepts (positions)
    takes_instruction: bool  # whether EncodeOptions.instruction means anything to it
    attention: str  # padded or unpadded: how its forward pass lays out a batch (/info, the log)
    attention_note: str  # why this attention path (start-up self-check, setting, device; "" if none)
    # Whether batches are padded to (pairs, longest): the batcher sorts by length and warm-up
    # visits the shapes. False: packed into one sequence, where padding costs nothing.
    padded: bool
    # Whether its runner computes behind ``launch`` on the CPU too (OpenVINO): the batcher may
    # then keep two batches in flight there. (On CUDA every launch is asynchronous.)
    asynchronous: bool
    # Start a forward pass and return at once; the raw scores come from ``Pending.result()``.
    # None: the model has only the blocking ``forward``, and the batcher runs one batch at a time.
    launch: Callable[[Sequence[Pair]], Pending] | None
    # int8 as /info shows it (models/quantize.py): the setting, what serves and why, the start-up
    # self-check's numbers. None: the family is never quantized.
    quantization: Mapping[str, object] | None

    def encode(self, query: str, documents: Sequence[str], options: EncodeOptions) -> list[Pair]:
        """At least one pair per document, each naming its document in ``Pair.doc``."""
        ...

    def forward(self, batch: Sequence[Pair]) -> list[float]:
        """Raw scores (logits) in float32 precision, one per pair, in order."""
        ...

    def activate(self, raw: float) -> float: ...


class Pending:
    """Raw scores a device is still computing: launched now, collected with ``result()``.

    On CUDA the scores are copied into page-locked host memory behind the computation and an
    event marks their arrival, so launching returns at once and the only wait is ``result()``
    (by then the batcher has the next batch queued behind this one). Elsewhere it is a list.
    """

    __slots__ = ("_event", "_host", "_later")

    def __init__(self, raw: torch.Tensor) -> None:
        raw = raw.float()
        self._event = None
        self._later: Callable[[], torch.Tensor] | None = None
        if raw.is_cuda:
            self._host = torch.empty(raw.shape, dtype=torch.float32, pin_memory=True)
            self._host.copy_(raw, non_blocking=True)
            self._event = torch.cuda.Event()
            self._event.record()
        else:
            self._host = raw

    @classmethod
    def later(cls, compute: Callable[[], torch.Tensor]) -> Pending:
        """Scores an asynchronous runner is computing: ``compute()`` waits for them (OpenVINO)."""
        pending = cls.__new__(cls)
        pending._event, pending._host, pending._later = None, None, compute
        return pending

    def result(self) -> list[float]:
        if self._later is not None:
            self._host, self._later = self._later().float(), None
        if self._event is not None:
            self._event.synchronize()
        return self._host.tolist()  # type: ignore[no-any-return]


def sigmoid(x: float) -> float:
    # The two branches keep exp() from overflowing on large logits of either sign.
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


def padded_layout(lengths: Sequence[int], *, side: Literal["right", "left"]) -> torch.Tensor:
    """The (pairs, longest) mask of where a batch's real tokens go, padding on ``side``."""
    # Built in numpy and shared with torch without a copy: a few small torch ops cost ~10x more
    # in dispatch than the work itself, and this runs in the batcher thread between forward passes.
    sizes = np.asarray(lengths, dtype=np.int64)
    width = int(sizes.max())
    columns = np.arange(width)[None, :]
    return torch.from_numpy(columns < sizes[:, None] if side == "right" else columns >= (width - sizes)[:, None])


def scatter_rows(rows: Iterable[Sequence[int]], layout: torch.Tensor, fill: int) -> torch.Tensor:
    """Rows of ids laid into a padded tensor at ``layout`` (one flat copy, no Python loop per pair)."""
    where = layout.numpy()
    out = np.full(where.shape, fill, dtype=np.int64)
    # row-major: each row's ids land in order in its row's True cells
    out[where] = np.fromiter(chain.from_iterable(rows), dtype=np.int64, count=int(where.sum()))
    return torch.from_numpy(out)


def pad(batch: Sequence[Pair], pad_id: int, *, side: Literal["right", "left"], device: str) -> dict[str, torch.Tensor]:
    """Pad a batch into ``input_ids`` and ``attention_mask`` (and, on the left, ``position_ids``).

    Left padding (decoder models, scored at the last position) also passes position ids that
    start at 0 on each pair's first real token, so a padded pair is computed exactly as it would
    be alone.
    """
    layout = padded_layout([len(p) for p in batch], side=side)
    mask = layout.long()
    out = {"input_ids": scatter_rows((p.ids for p in batch), layout, pad_id), "attention_mask": mask}
    if side == "left":
        out["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0)
    return {k: to_device(v, device) for k, v in out.items()}


def to_device(tensor: torch.Tensor, device: str) -> torch.Tensor:
    """A host tensor on ``device``; on CUDA through page-locked memory, a copy that does not block."""
    if device.startswith("cuda"):
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor if device == "cpu" else tensor.to(device)
