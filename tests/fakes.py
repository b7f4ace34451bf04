"""A fake model family for scheduler tests: records every batch, scores deterministically."""

from __future__ import annotations

import threading
import time
from typing import Sequence

from reranker_serve.models.base import EncodeOptions, Pair


def fake_score(pair: Pair) -> float:
    return float(sum(pair.ids) % 1000) / 10.0


class FakeModel:
    name = "fake-reranker"
    family = "encoder"
    takes_instruction = False
    device = "cpu"
    dtype_name = "float32"
    max_length = 512
    backend = "torch"
    backend_note = ""
    attention = "padded"
    attention_note = ""
    padded = True
    asynchronous = False
    launch = None  # only the blocking forward (subclasses that pipeline define launch)
    quantization = None

    def __init__(self, *, delay: float = 0.0, fail_on: int | None = None, oom_above: int | None = None,
                 clock=None) -> None:
        self.batches: list[list[Pair]] = []
        self.delay = delay
        self.clock = clock  # a FakeClock (tests/clocks.py): a pass advances it by `delay` instead of sleeping
        self.fail_on = fail_on  # a pair holding this token id makes the forward pass raise
        self.oom_above = oom_above  # batches larger than this raise an out-of-memory error
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()

    def encode(self, query: str, documents: Sequence[str], options: EncodeOptions) -> list[Pair]:
        # "document" text "7 7 7" -> ids [7, 7, 7]; the query is ignored.
        return [Pair([int(t) for t in doc.split()], doc=i) for i, doc in enumerate(documents)]

    def forward(self, batch: Sequence[Pair]) -> list[float]:
        self.entered.set()
        self.gate.wait(timeout=30)
        if self.oom_above is not None and len(batch) > self.oom_above:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        self.batches.append(list(batch))
        if self.delay and self.clock is not None:
            self.clock.advance(self.delay)
        elif self.delay:
            time.sleep(self.delay)
        if self.fail_on is not None and any(self.fail_on in p.ids for p in batch):
            raise RuntimeError("simulated kernel failure")
        return [fake_score(p) for p in batch]

    def activate(self, raw: float) -> float:
        return raw

    def scored_ids(self) -> set[tuple[int, ...]]:
        return {tuple(p.ids) for batch in self.batches for p in batch}
