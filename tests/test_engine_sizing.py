"""Batch sizing per device and the start-up warm-up (CUDA mocked: a fake model that says cuda)."""

from __future__ import annotations

from typing import Sequence

import pytest
import torch

from fakes import FakeModel
from reranker_serve.config import Settings
from reranker_serve.engine import Engine
from reranker_serve.models.base import EncodeOptions, Pair


class GpuFake(FakeModel):
    device = "cuda"
    padded = False  # runs unpadded: the budget counts real tokens

    def encode(self, query: str, documents: Sequence[str], options: EncodeOptions) -> list[Pair]:
        return [Pair([5] * options.max_length, doc=i) for i, _ in enumerate(documents)]


def test_on_a_gpu_the_token_budget_governs_and_every_length_is_warmed_up(monkeypatch):
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *args: None)
    model = GpuFake()
    engine = Engine(model, Settings(_env_file=None))
    batcher = engine.batcher
    assert (batcher.max_batch_tokens, batcher.max_batch_size, batcher.padded) == (32768, 1024, False)
    engine.warm_up()
    shapes = [(len(b), len(b[0])) for b in model.batches]
    # One small pass, then every power-of-two length at the full budget (before /ready).
    assert shapes == [(1, 512), (1024, 32), (512, 64), (256, 128), (128, 256), (64, 512)]


def test_on_the_cpu_the_measured_defaults_hold_and_one_pass_warms_up():
    model = FakeModel()
    model.encode = lambda query, docs, options: [Pair([1, 2, 3])]  # type: ignore[method-assign]
    engine = Engine(model, Settings(_env_file=None))
    assert (engine.batcher.max_batch_tokens, engine.batcher.max_batch_size, engine.batcher.padded) == (1024, 32, True)
    engine.warm_up()
    assert len(model.batches) == 1


@pytest.mark.parametrize("options,expected", [({"batch_size": 64}, (32768, 64)), ({"max_batch_tokens": 8192}, (8192, 1024))])
def test_explicit_sizes_win_on_a_gpu(options, expected):
    engine = Engine(GpuFake(), Settings(_env_file=None, **options))
    assert (engine.batcher.max_batch_tokens, engine.batcher.max_batch_size) == expected
