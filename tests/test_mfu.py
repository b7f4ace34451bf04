"""scripts/mfu.py: the benchmark's FLOPs per pair against a hand count, and MFU from a run."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))

import mfu  # noqa: E402

# bge-reranker-base's config (XLMRobertaForSequenceClassification): the sizes FLOPs depend on.
BGE_BASE = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "id2label": {"0": "LABEL_0"}}


def test_flops_per_pair_matches_a_hand_count():
    tiny = {"hidden_size": 4, "intermediate_size": 8, "num_hidden_layers": 2, "num_labels": 1}
    # Per layer, 3 tokens: Q, K, V, O (4 matrices 4x4) and the FFN (4x8, 8x4): 2 FLOPs per
    # multiply-add per token: 2*(64 + 64)*3 = 768; QK^T and attention.V: 2 * (2*3*3*4) = 144.
    # Two layers: 2 * 912 = 1824. Head on the first token only: dense 4x4 + out_proj 4x1: 2*(16 + 4) = 40.
    assert mfu.flops_per_pair(tiny, 3) == 1864
    # bge-reranker-base at 230 tokens (the benchmark's mean): 12 * (14,155,776 * 230 + 4 * 230^2 * 768)
    # + 2 * (768^2 + 768) = 41,021,228,544; the head is not counted per token.
    assert mfu.flops_per_pair(BGE_BASE, 230) == 41_021_228_544


def test_mfu_over_wall_clock_and_per_cpu_second():
    peak = {"gflops": 1000.0, "gflops_per_cpu": 800.0}
    # 8e11 useful FLOPs in 2 s on 2 threads that used 4 CPU seconds (the cores to themselves).
    got = mfu.mfu(8e11, 2.0, 4.0, 2, peak)
    assert got["useful_gflops"] == pytest.approx(400.0)
    assert got["mfu"] == pytest.approx(0.4)
    assert got["mfu_cpu"] == pytest.approx(400.0 / 800.0)
    # Sharing the cores (1 CPU second of the 2 s): the per-CPU figure is what the server did with its time.
    assert mfu.mfu(8e11, 2.0, 1.0, 2, peak)["mfu_cpu"] == pytest.approx(2.0)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "int8", "q8_0"])
def test_matmul_peak_measures_the_served_precision(dtype):
    got = mfu.matmul_peak(dtype, threads=1, repeat=1)
    assert got is not None and got["gflops"] > 0 and got["gflops_per_cpu"] > 0
    assert mfu.matmul_peak("bfloat16-unknown", threads=1) is None
