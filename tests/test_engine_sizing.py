"""Batch sizing per device and the start-up warm-up (CUDA mocked: a fake model that says cuda)."""

from __future__ import annotations

import time
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


class ShapeCostFake(FakeModel):
    """A CPU model whose first pass over a (pairs, length) shape costs ``preparation`` seconds more."""

    def __init__(self, preparation: float) -> None:
        super().__init__()
        self.preparation = preparation
        self.seen: set[tuple[int, int]] = set()

    def encode(self, query: str, documents: Sequence[str], options: EncodeOptions) -> list[Pair]:
        length = 4 if documents == ["d"] else options.max_length  # the shortest pair: 4 tokens
        return [Pair(list(range(length)), doc=i) for i, _ in enumerate(documents)]

    def forward(self, batch: Sequence[Pair]) -> list[float]:
        shape = (len(batch), len(batch[0]))
        if shape not in self.seen:
            self.seen.add(shape)
            time.sleep(self.preparation)
        return super().forward(batch)


def test_on_the_cpu_the_measured_defaults_hold_and_one_pass_warms_up():
    model = FakeModel()
    model.encode = lambda query, docs, options: [Pair([1, 2, 3])]  # type: ignore[method-assign]
    engine = Engine(model, Settings(_env_file=None))
    assert (engine.batcher.max_batch_tokens, engine.batcher.max_batch_size, engine.batcher.padded) == (1024, 32, True)
    engine.warm_up()
    # One small pass, and two probe shapes timed twice: no per-shape cost, so no sweep.
    assert [(len(b), len(b[0])) for b in model.batches] == [(1, 3), (3, 3), (5, 3), (3, 3), (5, 3)]


def test_on_the_cpu_a_model_whose_new_shapes_cost_gets_every_full_batch_shape_warmed():
    model = ShapeCostFake(preparation=0.003)
    model.max_length = 64
    engine = Engine(model, Settings(_env_file=None, max_batch_tokens=256, batch_size=16))
    engine.warm_up()
    swept = [(len(b), len(b[0])) for b in model.batches[5:]]
    # Every length from the shortest pair (4 tokens) to max_length, as many pairs as the budget allows.
    assert swept == [(min(16, 256 // n), n) for n in range(4, 65)]
    assert model.batches[1][0].ids == list(range(61))[:len(model.batches[1][0])]  # probes: prefixes of a real pair


def test_the_shape_sweep_stops_at_its_time_budget_and_zero_turns_it_off():
    model = ShapeCostFake(preparation=0.003)
    model.max_length = 512
    engine = Engine(model, Settings(_env_file=None, warmup_seconds=0.1))
    started = time.perf_counter()
    engine.warm_up()
    assert time.perf_counter() - started < 1.0
    assert 5 < len(model.batches) < 5 + 100  # cut short: 509 lengths would take 1.5 s
    off = ShapeCostFake(preparation=0.003)
    Engine(off, Settings(_env_file=None, warmup_seconds=0)).warm_up()
    assert len(off.batches) == 1


@pytest.mark.parametrize("options,expected", [({"batch_size": 64}, (32768, 64)), ({"max_batch_tokens": 8192}, (8192, 1024))])
def test_explicit_sizes_win_on_a_gpu(options, expected):
    engine = Engine(GpuFake(), Settings(_env_file=None, **options))
    assert (engine.batcher.max_batch_tokens, engine.batcher.max_batch_size) == expected


class AsyncCpuFake(FakeModel):
    """A CPU model whose runner computes asynchronously (as OpenVINO's does)."""

    asynchronous = True

    def launch(self, batch):  # pragma: no cover - only its presence matters here
        raise AssertionError


@pytest.mark.parametrize("model,lock,depth", [
    (AsyncCpuFake(), None, 2),  # alone on the CPU: the next batch is queued behind the running one
    (AsyncCpuFake(), "shared", 1),  # beside other models: one whole pass at a time under the lock
    (FakeModel(), None, 1),  # a synchronous runner
])
def test_two_batches_in_flight_only_where_the_runner_is_asynchronous_and_alone(model, lock, depth):
    import threading

    engine = Engine(model, Settings(_env_file=None), device_lock=threading.Lock() if lock else None)
    assert engine.batcher.depth == depth
