"""Model FLOPs utilisation (MFU) for the benchmarks: useful work per pair, and this CPU's matmul peak.

Useful FLOPs of one (query, document) pair of L tokens (padding excluded) through a BERT/XLM-R
cross-encoder (the bge-reranker family: ``XLMRobertaForSequenceClassification``), from its
config: hidden size h, FFN width f (``intermediate_size``), n layers, c labels; a multiply-add
counts 2 FLOPs:

    per layer, per token      2·(4h² + 2hf)   Q, K, V and output projections, the two FFN matrices
    per layer                 4·L²·h          QKᵀ (2·L²·h) and attention·V (2·L²·h), all heads
    once, on the first token  2·(h² + h·c)    the classification head (dense, out_proj): RoBERTa's
                                              head reads only the <s> token
    total = n·(2·L·(4h² + 2hf) + 4·L²·h) + 2·(h² + h·c)

Left out, as MFU conventionally does: embeddings (gathers), layer norms, softmax, GELU, biases,
residual adds (O(L·h) each, under 1% here). bge-reranker-base (h 768, f 3072, 12 layers) at the
benchmark's mean 230 tokens: 41.0 GFLOP a pair.

The peak is what the served precision's dense matmul reaches on this CPU with the same threads:
torch for float32 / bfloat16 (``a @ b``), OpenVINO's CPU plugin for int8 (a u8 × i8
FullyConnected, the kernel NNCF's static int8 model runs; torch's ``_int_mm`` on the CPU is not
the kernel OpenVINO uses and reaches less). Both as wall-clock GFLOP/s (the best of several
repeats) and per CPU second (FLOPs over the process's CPU seconds, times the threads): on a
machine shared with other work the second moves less, since it does not count the time the
cores ran someone else.
"""

from __future__ import annotations

import time
from typing import Callable

# What each served dtype's work is compared with (llama.cpp's Q8_0 runs int8 dot products).
PEAK_OF = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16", "int8": "int8", "q8_0": "int8"}


def flops_per_pair(config: dict, tokens: int) -> float:
    """Useful FLOPs of one pair of ``tokens`` tokens (the formula in the module docstring)."""
    h, layers = config["hidden_size"], config["num_hidden_layers"]
    ffn = config.get("intermediate_size", 4 * h)
    labels = len(config.get("id2label") or {}) or config.get("num_labels", 1)
    per_token = 2 * (4 * h * h + 2 * h * ffn)
    attention = 4 * tokens * tokens * h
    head = 2 * (h * h + h * labels)
    return layers * (per_token * tokens + attention) + head


def _timed(run: Callable[[], object], flops: float, repeat: int) -> tuple[float, float]:
    """(best wall-clock GFLOP/s, GFLOP per CPU second over all repeats) of ``run``."""
    for _ in range(3):
        run()
    best, cpu = float("inf"), 0.0
    for _ in range(repeat):
        wall, used = time.perf_counter(), time.process_time()
        run()
        best = min(best, time.perf_counter() - wall)
        cpu += time.process_time() - used
    return flops / best / 1e9, flops * repeat / max(cpu, 1e-9) / 1e9


def _torch_peak(dtype_name: str, threads: int, repeat: int) -> tuple[float, float]:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        dtype = getattr(torch, dtype_name)
        best = (0.0, 0.0)
        for m, k, n in ((1024, 1024, 1024), (2048, 2048, 2048)):
            a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
            best = max(best, _timed(lambda: a @ b, 2 * m * k * n, repeat))
        return best
    finally:
        torch.set_num_threads(before)


def _openvino_int8_peak(threads: int, repeat: int) -> tuple[float, float]:
    import numpy as np

    from reranker_serve.models.openvino import import_openvino

    ov = import_openvino()
    ops = ov.opset13
    rng = np.random.default_rng(0)
    best = (0.0, 0.0)
    for m, k, n in ((1024, 768, 3072), (2048, 1024, 4096)):
        x = ops.parameter([m, k], np.float32, name="x")
        low, high = ops.constant(np.float32(-4)), ops.constant(np.float32(4))
        # NNCF's pattern: quantized activations × int8 weights dequantized by a per-channel scale,
        # which the CPU plugin runs as one u8 × i8 FullyConnected.
        activations = ops.fake_quantize(x, low, high, low, high, 256)
        weights = ops.multiply(ops.convert(ops.constant(rng.integers(-127, 127, (n, k)).astype(np.int8)), np.float32),
                               ops.constant(np.full((n, 1), 0.01, np.float32)))
        model = ov.Model([ops.matmul(activations, weights, False, True)], [x])
        compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": str(threads), "NUM_STREAMS": "1",
                                                          "PERFORMANCE_HINT": "LATENCY"})
        request, data = compiled.create_infer_request(), rng.standard_normal((m, k)).astype(np.float32)
        best = max(best, _timed(lambda: request.infer({0: data}), 2 * m * k * n, repeat))
    return best


def matmul_peak(dtype_name: str, threads: int, repeat: int = 10) -> dict[str, float] | None:
    """This CPU's dense matmul rate for a served dtype (None: no peak for it here).

    ``{"gflops": wall clock, "gflops_per_cpu": per CPU second × threads}``."""
    precision = PEAK_OF.get(dtype_name)
    if precision is None:
        return None
    if precision == "int8":
        try:
            wall, per_cpu = _openvino_int8_peak(threads, repeat)
        except ImportError:
            return None
    elif precision == "float16":
        return None  # no fp16 matmul hardware on the CPUs this measures
    else:
        wall, per_cpu = _torch_peak(precision, threads, repeat)
    return {"gflops": wall, "gflops_per_cpu": per_cpu * threads}


def mfu(useful_flops: float, seconds: float, cpu_seconds: float | None, threads: int,
        peak: dict[str, float]) -> dict[str, float]:
    """Useful GFLOP/s and its share of ``peak``: over wall-clock time, and per CPU second the
    server's process used (all its threads), scaled to ``threads`` cores."""
    out = {"useful_gflops": useful_flops / seconds / 1e9, "peak_gflops": peak["gflops"]}
    out["mfu"] = out["useful_gflops"] / peak["gflops"]
    if cpu_seconds:
        out["mfu_cpu"] = useful_flops / cpu_seconds * threads / 1e9 / peak["gflops_per_cpu"]
    return out
