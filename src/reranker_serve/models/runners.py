"""Runners: what executes a sequence classifier's forward pass over a batch of pairs.

The reranker (encoder.py) owns the template, the labels and the activation; a runner owns one
way of turning a batch of pairs into logits (infinity-emb's cross-encoder backends over one
abstract base have this shape):

    PaddedRunner     torch, pairs right-padded to the longest; SDPA attention (on CUDA never
                     cuDNN's, which plans every new (batch, length) shape: see ``sdpa_backends``)
    UnpaddedRunner   torch, the batch's tokens packed into one sequence, attention per pair by
                     variable-length kernels (``attention.py``): padding costs nothing
    OpenVINORunner   (openvino.py) the same padded inputs through an OpenVINO compiled model

A new way to run the same encoder (ONNX, TensorRT) is one more subclass of ``Runner``.
"""

from __future__ import annotations

import itertools
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from ..device import sdpa_backends
from .attention import UNPADDED, Kernel
from .base import Pair, pad, padded_layout, scatter_rows, to_device

__all__ = ["Feed", "Packed", "PaddedRunner", "Runner", "UnpaddedRunner", "pack", "padded_inputs", "unpadded_head"]

# Position tables of RoBERTa-style models start after the padding index.
POSITION_OFFSET_MODELS = frozenset({"roberta", "xlm-roberta", "camembert", "xlm-roberta-xl", "longformer"})


@dataclass(frozen=True, slots=True)
class Feed:
    """How pairs become a model's inputs: its padding id, token types, and position numbering."""

    pad_id: int
    with_types: bool
    # RoBERTa-style positions count non-padding tokens from padding_idx + 1 (None: 0, 1, 2, ...).
    position_padding_idx: int | None = None


def padded_inputs(batch: Sequence[Pair], feed: Feed, *, device: str) -> dict[str, torch.Tensor]:
    """The padded model inputs of a batch (token types too, for models that have them)."""
    inputs = pad(batch, feed.pad_id, side="right", device=device)
    if feed.with_types:
        layout = padded_layout([len(p) for p in batch], side="right")
        types = scatter_rows((p.type_ids or [0] * len(p) for p in batch), layout, 0)
        inputs["token_type_ids"] = to_device(types, device)
    return inputs


@dataclass(frozen=True, slots=True)
class Packed:
    """A batch as one sequence: ``cu_seqlens[i]:cu_seqlens[i+1]`` are pair i's tokens."""

    input_ids: torch.Tensor  # (1, total)
    position_ids: torch.Tensor  # (1, total), exactly those of the padded path
    token_type_ids: torch.Tensor | None  # (1, total)
    cu_seqlens: torch.Tensor  # (pairs + 1,) int32
    max_len: int

    @property
    def starts(self) -> torch.Tensor:
        return self.cu_seqlens[:-1].long()


def pack(batch: Sequence[Pair], feed: Feed, *, device: str) -> Packed:
    """Pack a batch into one sequence with per-pair positions and token types (no per-pair tensors)."""
    lengths = torch.tensor([len(p) for p in batch], dtype=torch.long)
    ids = torch.tensor(list(itertools.chain.from_iterable(p.ids for p in batch)), dtype=torch.long)
    cu = torch.zeros(len(batch) + 1, dtype=torch.int32)
    torch.cumsum(lengths, 0, out=cu[1:])
    starts = torch.repeat_interleave(cu[:-1].long(), lengths)
    if feed.position_padding_idx is None:
        positions = torch.arange(ids.numel()) - starts  # BERT: 0, 1, 2, ... in each pair
    else:
        # As transformers' create_position_ids_from_input_ids on the padded batch: non-padding
        # tokens count from padding_idx + 1 within their pair; a padding id keeps padding_idx.
        real = ids.ne(feed.position_padding_idx).long()
        counted = real.cumsum(0)
        before = (counted - real)[cu[:-1].long()]  # real tokens before each pair's first token
        positions = (counted - torch.repeat_interleave(before, lengths)) * real + feed.position_padding_idx
    types = None
    if feed.with_types:
        types = torch.tensor(list(itertools.chain.from_iterable(p.type_ids or [0] * len(p) for p in batch)),
                             dtype=torch.long)[None]
    return Packed(
        input_ids=to_device(ids[None], device), position_ids=to_device(positions[None], device),
        token_type_ids=None if types is None else to_device(types, device), cu_seqlens=to_device(cu, device),
        max_len=int(lengths.max()),
    )


class Runner(ABC):
    """One way to run a sequence classifier: pairs in, logits (pairs × labels) out."""

    backend: str = "torch"  # what executes it (/info)
    attention: str = "padded"  # padded or unpadded (/info)
    padded: bool = True  # whether a batch costs pairs × its longest pair (else: its real tokens)
    # Whether start() returns before the batch is computed: the batcher then keeps two batches
    # in flight (the next one assembled and queued while this one computes).
    asynchronous: bool = False
    device: str
    dtype: torch.dtype

    @abstractmethod
    def logits(self, batch: Sequence[Pair]) -> torch.Tensor: ...

    def start(self, batch: Sequence[Pair]) -> Callable[[], torch.Tensor]:
        """Start computing a batch's logits; the call returned waits for them. Here: computed now."""
        out = self.logits(batch)
        return lambda: out

    @property
    def dtype_name(self) -> str:
        return str(self.dtype).removeprefix("torch.")


class PaddedRunner(Runner):
    """The transformers model called on a right-padded batch (SDPA attention)."""

    def __init__(self, model: Any, feed: Feed) -> None:
        self.model = model.eval()
        self.feed = feed
        self.device = str(model.device)
        self.dtype = model.dtype

    def logits(self, batch: Sequence[Pair]) -> torch.Tensor:
        with sdpa_backends(self.device):
            return self.model(**padded_inputs(batch, self.feed, device=self.device)).logits


Head = Callable[[torch.Tensor], torch.Tensor]  # (pairs, hidden) first-token states -> logits


def unpadded_head(model: Any) -> tuple[Any, Head] | str:
    """The encoder module and classification head to run a model unpadded, or why it cannot be.

    The model's own modules run (embeddings, layers, head): only the attention differs, through
    transformers' attention-function registry, so weights are never copied or re-implemented.
    """
    config = model.config
    base = getattr(model, getattr(model, "base_model_prefix", ""), None)
    classifier = getattr(model, "classifier", None)
    if base is None or classifier is None or getattr(config, "is_decoder", False):
        return f"no unpadded path for {type(model).__name__}"
    if config.model_type in POSITION_OFFSET_MODELS and hasattr(classifier, "out_proj"):
        # RobertaClassificationHead reads features[:, 0]: one first-token row per pair.
        return base, lambda first: classifier(first[:, None, :])
    if config.model_type == "bert" and getattr(base, "pooler", None) is not None:
        dropout = getattr(model, "dropout", torch.nn.Identity())
        return base, lambda first: classifier(dropout(base.pooler(first[:, None, :])))
    return f"no unpadded path for model_type {config.model_type!r} ({type(model).__name__})"


class UnpaddedRunner(Runner):
    """Packed tokens, per-pair variable-length attention, the first token of each pair classified."""

    attention = "unpadded"
    padded = False

    def __init__(self, model: Any, feed: Feed, *, kernel: Kernel) -> None:
        found = unpadded_head(model)
        if isinstance(found, str):
            raise ValueError(found)
        self.model = model.eval()
        self._base, self._head = found
        self.feed = feed
        self.kernel = kernel
        self.device = str(model.device)
        self.dtype = model.dtype

    def logits(self, batch: Sequence[Pair]) -> torch.Tensor:
        packed = pack(batch, self.feed, device=self.device)
        with UNPADDED.on(self.model.config):
            hidden = self._base(
                input_ids=packed.input_ids, position_ids=packed.position_ids, token_type_ids=packed.token_type_ids,
                attention_mask=None, cu_seq_lens_q=packed.cu_seqlens, cu_seq_lens_k=packed.cu_seqlens,
                max_length_q=packed.max_len, max_length_k=packed.max_len, varlen_kernel=self.kernel,
            ).last_hidden_state[0]
        return self._head(hidden.index_select(0, packed.starts))
