#!/usr/bin/env python3
"""Speed and drift of OpenVINO int8 (static and weight-only) against float32 and bf16, in-process.

    python scripts/int8_check.py --model /tmp/bge-base --queries 4 --docs 10

Loads the model as the server does (OpenVINO backend), then times each mode over the same
length-sorted batches of Vaswani (query, document) pairs (--batch-tokens per batch, as the
batcher builds them): OpenVINO float32, bf16, int8 static (NNCF, calibrated on the built-in set
or --calibration) and int8 weight-only. Drift is measured against torch float32 twice: on the
timed workload, and on the start-up self-check set with its bounds (models/quantize.py), so the
numbers are the ones /info would show. int8-static / int8-weights compile their float operations
in f32, as on a CPU without bf16 hardware; int8-static-bf16 compiles them in bf16, as the server
does with RERANKER_QUANTIZE=int8 where the CPU has bf16 hardware (the placement's dtype is bf16
there); bf16 only runs where the CPU has it (it is emulated, slowly, elsewhere).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))


def main() -> int:
    import torch

    from benchmark import DEFAULT_DATA, build_requests
    from drift import length_sorted_batches
    from reranker_serve.config import Settings
    from reranker_serve.device import Placement, configure_cpu_threads, cpu_has_fast_bf16
    from reranker_serve.models import EncodeOptions, load_model
    from reranker_serve.models import quantize as q
    from reranker_serve.models.openvino import compile_for_cpu, convert_to_openvino
    from reranker_serve.models.quantize_texts import CHECK_TOPICS
    from reranker_serve.models.runners import PaddedRunner

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--batch-tokens", type=int, default=1024)
    ap.add_argument("--queries", type=int, default=4)
    ap.add_argument("--docs", type=int, default=10)
    ap.add_argument("--min-words", type=int, default=20)
    ap.add_argument("--max-words", type=int, default=300)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--repeat", type=int, default=2, help="timed passes over the workload per mode (best kept)")
    ap.add_argument("--calibration", type=Path, help="JSONL calibration pairs (default: the built-in set)")
    ap.add_argument("--modes", default="float32,bfloat16,int8-static,int8-weights")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    args.text, args.requests = None, args.queries
    threads = configure_cpu_threads(0)
    requests = build_requests(args)

    spec = Settings(_env_file=None, model_path=args.model, max_length=args.max_length, backend="torch",
                    dtype="float32").model_specs[0]
    reranker = load_model(spec, Placement("cpu", torch.float32))
    model, feed = reranker.runner.model, reranker.runner.feed
    options = EncodeOptions(max_length=reranker.max_length)
    encoded = [reranker.encode(query, docs, options) for query, docs in requests]
    batches = length_sorted_batches(encoded, batch_tokens=args.batch_tokens)
    check = [reranker.encode(query, docs, options) for query, docs in CHECK_TOPICS]

    def run(runner) -> tuple[list[list[float]], float]:
        out = [[0.0] * len(pairs) for pairs in encoded]
        runner.logits(encoded[0][:2])  # warm up
        best = float("inf")
        for _ in range(args.repeat):
            started = time.perf_counter()
            for batch in batches:
                raw = reranker.raw_scores(runner.logits([encoded[r][i] for _, r, i in batch])).tolist()
                for (_, r, i), x in zip(batch, raw):
                    out[r][i] = x
            best = min(best, time.perf_counter() - started)
        return out, best

    def on_check(runner) -> list[list[float]]:
        return [reranker.raw_scores(runner.logits(pairs)).tolist() for pairs in check]

    pairs = sum(len(p) for p in encoded)
    with torch.inference_mode():
        reference, torch_seconds = run(PaddedRunner(model, feed))
        check_reference = on_check(PaddedRunner(model, feed))
    report: dict[str, object] = {
        "model": str(args.model), "pairs": pairs, "threads": threads, "cpu_has_fast_bf16": cpu_has_fast_bf16(),
        "torch float32": {"pairs_per_s": round(pairs / torch_seconds, 2)},
    }
    converted = convert_to_openvino(model, feed)
    encode = lambda query, docs: reranker.encode(query, docs, options)  # noqa: E731
    topics, _ = q.calibration_topics(args.calibration)
    names = {"input_ids", "attention_mask"} | ({"token_type_ids"} if feed.with_types else set())
    quantized: dict = {}
    for mode in args.modes.split(","):
        started = time.perf_counter()
        if mode.startswith("int8-"):
            # int8-static, int8-weights: float operations in f32; int8-static-bf16: in bf16 (as served
            # where the CPU has bf16 hardware). One quantized graph per method, compiled both ways.
            method, _, floats = mode.removeprefix("int8-").partition("-")
            if method not in quantized:
                samples = q._samples(encode, topics, feed, names) if method == "static" else []
                quantized[method] = q._quantize(converted.clone(), method, samples)
            graph = quantized[method]
            dtype, precision = (torch.bfloat16 if floats == "bf16" else torch.float32), "int8"
        else:
            graph, dtype, precision = converted, getattr(torch, mode), None
        runner = compile_for_cpu(graph, feed, dtype=dtype, threads=threads, precision=precision)
        prepared = time.perf_counter() - started
        with torch.inference_mode():
            got, seconds = run(runner)
            workload = q.agreement(reference, got)
            self_check = q.agreement(check_reference, on_check(runner))
        report[f"openvino {mode}"] = {
            "pairs_per_s": round(pairs / seconds, 2), "speed_vs_torch_float32": round(torch_seconds / seconds, 2),
            "prepare_seconds": round(prepared, 1), "workload_drift": workload.as_info(),
            "self_check": {**self_check.as_info(), "passes_bounds": not self_check.failures()},
        }
        print(mode, json.dumps(report[f"openvino {mode}"]), flush=True)
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
