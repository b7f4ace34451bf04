"""What the engine needs from a model family, whatever its architecture.

A family turns (query, documents) into token pairs (``encode``), a batch of pairs into one raw
score per pair (``forward``), and a raw score into a relevance score (``activate``). The
activation lives here, once per family, so ``raw_scores`` is simply "skip activate".
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Protocol, Sequence

__all__ = ["EncodeOptions", "Pair", "ScoringModel", "sigmoid"]


@dataclass(frozen=True, slots=True)
class Pair:
    """One tokenized (query, document) input, ready to be padded into a batch."""

    ids: list[int]
    type_ids: list[int] | None = None

    def __len__(self) -> int:
        return len(self.ids)


@dataclass(frozen=True, slots=True, kw_only=True)
class EncodeOptions:
    """How to fit a pair into the model's window.

    truncate=False makes an over-long pair an error instead (TEI's `truncate: false`).
    truncation_direction says which end of the document (and, when it must, the query) is cut.
    max_doc_tokens caps each document before the window is applied (Cohere v2).
    """

    max_length: int
    truncate: bool = True
    truncation_direction: Literal["right", "left"] = "right"
    max_doc_tokens: int | None = None


class ScoringModel(Protocol):
    name: str
    device: str
    dtype_name: str
    max_length: int  # most tokens per pair the model accepts (positions)

    def encode(self, query: str, documents: Sequence[str], options: EncodeOptions) -> list[Pair]: ...

    def forward(self, batch: Sequence[Pair]) -> list[float]:
        """Raw scores (logits) in float32 precision, one per pair, in order."""
        ...

    def activate(self, raw: float) -> float: ...


def sigmoid(x: float) -> float:
    # The two branches keep exp() from overflowing on large logits of either sign.
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)
