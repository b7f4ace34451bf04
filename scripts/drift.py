#!/usr/bin/env python3
"""Score drift of each backend and precision against torch float32, through the server's model path.

    python scripts/drift.py --model /tmp/m/bge-reranker-base --modes torch:bfloat16,openvino:bfloat16

For each query (Vaswani topics by default) and its documents (Vaswani abstracts, joined to
20-300 words), scores every pair with torch in float32 (the reference) and in each listed
backend:dtype mode, then reports the max absolute difference of logits and of sigmoid scores,
Spearman's rank correlation per query, and how often the top document is the same. Also times
each mode (length-sorted batches of --batch-tokens, as the server runs them), so a default can
be chosen as the fastest mode whose drift is defensible.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))


def length_sorted_batches(encoded: list[list[list[int]]], *, batch_tokens: int) -> list[list[tuple[int, int, int]]]:
    """(length, request, pair) batches, longest first, each under the padded-token budget, as
    the batcher makes them (shared with int8_check.py, so both measure the same batches)."""
    flat = sorted(((len(p), r, i) for r, pairs in enumerate(encoded) for i, p in enumerate(pairs)), reverse=True)
    batches: list[list[tuple[int, int, int]]] = []
    current: list[tuple[int, int, int]] = []
    for item in flat:
        if current and (len(current) + 1) * current[0][0] > batch_tokens:
            batches.append(current)
            current = []
        current.append(item)
    batches.append(current)
    return batches


def spearman(a: list[float], b: list[float]) -> float:
    def ranks(x: list[float]) -> list[float]:
        order = sorted(range(len(x)), key=lambda i: x[i])
        r = [0.0] * len(x)
        for rank, i in enumerate(order):
            r[i] = float(rank)
        return r

    ra, rb = ranks(a), ranks(b)
    n = len(a)
    d2 = sum((x - y) ** 2 for x, y in zip(ra, rb))
    return 1 - 6 * d2 / (n * (n * n - 1)) if n > 1 else 1.0


def main() -> int:
    import torch

    from benchmark import DEFAULT_DATA, build_requests
    from reranker_serve.config import Settings
    from reranker_serve.device import Placement, configure_cpu_threads
    from reranker_serve.models import EncodeOptions, load_model
    from reranker_serve.models.base import sigmoid

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--modes", default="torch:bfloat16,openvino:float32,openvino:bfloat16",
                    help="comma-separated backend:dtype to compare with torch:float32")
    ap.add_argument("--batch-tokens", type=int, default=1024)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--queries", type=int, default=4)
    ap.add_argument("--docs", type=int, default=10)
    ap.add_argument("--min-words", type=int, default=20)
    ap.add_argument("--max-words", type=int, default=300)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    args.text, args.requests = None, args.queries
    configure_cpu_threads(0)
    requests = build_requests(args)

    def score(mode: str) -> tuple[list[list[float]], float]:
        backend, _, dtype = mode.partition(":")
        spec = Settings(_env_file=None, model_path=args.model, max_length=args.max_length,
                        backend=backend).model_specs[0]
        model = load_model(spec, Placement(args.device, getattr(torch, dtype)))
        options = EncodeOptions(max_length=model.max_length)
        encoded = [model.encode(query, docs, options) for query, docs in requests]
        batches = length_sorted_batches(encoded, batch_tokens=args.batch_tokens)
        model.forward(encoded[0][:2])  # warm up
        out = [[0.0] * len(pairs) for pairs in encoded]
        started = time.perf_counter()
        for batch in batches:
            for (_, r, i), raw in zip(batch, model.forward([encoded[r][i] for _, r, i in batch])):
                out[r][i] = raw  # raw logits, float32
        return out, time.perf_counter() - started

    reference, ref_time = score("torch:float32")
    report = {"model": str(args.model), "pairs": sum(len(d) for _, d in requests), "float32_seconds": ref_time}
    for dtype in args.modes.split(","):
        got, seconds = score(dtype)
        flat_ref = [x for q in reference for x in q]
        flat_got = [x for q in got for x in q]
        report[dtype] = {
            "seconds": seconds,
            "speed_vs_float32": ref_time / seconds,
            "max_abs_logit_diff": max(abs(a - b) for a, b in zip(flat_ref, flat_got)),
            "max_abs_score_diff": max(abs(sigmoid(a) - sigmoid(b)) for a, b in zip(flat_ref, flat_got)),
            "mean_spearman": sum(spearman(r, g) for r, g in zip(reference, got)) / len(got),
            "top1_agreement": sum(max(range(len(r)), key=r.__getitem__) == max(range(len(g)), key=g.__getitem__)
                                  for r, g in zip(reference, got)) / len(got),
            "float32_logit_std": (sum(x * x for x in flat_ref) / len(flat_ref)
                                  - (sum(flat_ref) / len(flat_ref)) ** 2) ** 0.5,
        }
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
