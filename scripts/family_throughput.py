#!/usr/bin/env python3
"""CPU throughput of the nemotron-rerank and st-crossencoder families beside their naive
reference implementation, one invocation (issue 28 items 3 and 5).

    .venv/bin/python scripts/family_throughput.py --family nemotron --requests 6 --docs 16
    .venv/bin/python scripts/family_throughput.py --family st --requests 6 --docs 16

Builds a random-weight checkpoint of the stated shape in the published layout (the builders of
tests/nemotron_st_models.py; a small vocabulary, so the embedding table is tiny), then, on the
same Vaswani requests (scripts/benchmark.py's workload), one after the other:

    ours            our server (python -m reranker_serve), HTTP, --concurrency clients; default
                    settings (OpenVINO bf16 on a CPU with bf16 hardware), then RERANKER_DTYPE=float32
    naive           the published reference, one request at a time in this process, float32:
                    nemotron: the model card's usage (tokenizer(texts, padding=True, truncation=True),
                    the forward of llama_bidirectional_model.py transcribed: LlamaModel, bidirectional
                    padding mask, mean pooling, score); st: CrossEncoder(folder).predict(pairs)

Prints pairs/s for each.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "scripts"), str(ROOT / "tests")]

from benchmark import DEFAULT_DATA, build_requests, free_port, run_load, start_ours  # noqa: E402

# The shapes measured (docs/benchmarks.md). Nemotron: a quarter of llama-nemotron-rerank-1b-v2's
# width and depth (1B: hidden 2048, 16 layers, 32 heads, 8 kv heads, MLP 8192), the same head
# size and GQA ratio. st: ettin-reranker-17m-v1's encoder (hidden 256, 7 layers, MLP 384, 4 heads,
# local attention 128), the ettin head (cls, Dense GELU, LayerNorm, Dense to 1). Weights drawn
# with a trained model's spread (std 0.02), not the tests' wide one: bf16's start-up check is
# against float32 within a tolerance, which random weights of std 0.5 in the head exceed.
SHAPES = {
    "nemotron": dict(hidden=512, layers=4, heads=8, kv_heads=2, intermediate=2048, init=0.02),
    "st": dict(hidden=256, layers=7, intermediate=384, window=128, head_std=0.02),
}


def build(family: str, out: Path) -> Path:
    from nemotron_st_models import build_modular, build_nemotron

    if family == "nemotron":
        return build_nemotron(out / "nemotron", **SHAPES["nemotron"])
    return build_modular(out / "ettin", **SHAPES["st"])


def naive_nemotron(folder: Path, requests: list[tuple[str, list[str]]], max_length: int) -> float:
    import json

    import torch
    from safetensors.torch import load_file
    from transformers import AutoTokenizer, LlamaConfig, LlamaModel

    raw = json.loads((folder / "config.json").read_text())
    config = LlamaConfig(**{k: v for k, v in raw.items() if k not in ("pooling", "temperature", "auto_map",
                                                                        "model_type", "architectures")})
    config._attn_implementation = "sdpa"
    model = LlamaModel(config).eval()
    weights = load_file(folder / "model.safetensors")
    model.load_state_dict({k.removeprefix("model."): v for k, v in weights.items() if k.startswith("model.")})
    for layer in model.layers:
        layer.self_attn.is_causal = False
    score = weights["score.weight"]
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
    if tokenizer.pad_token is None:  # Llama 3 has none; padded positions are masked out anyway
        tokenizer.pad_token = tokenizer.eos_token
    pairs, started = 0, time.perf_counter()
    with torch.inference_mode():
        for query, docs in requests:
            enc = tokenizer([f"question:{query} \n \n passage:{d}" for d in docs], padding=True, truncation=True,
                            max_length=max_length, return_tensors="pt")
            mask = enc["attention_mask"]
            # _prepare_4d_attention_mask: 0 where a key is real, the dtype's minimum where it is padding.
            mask4d = (1.0 - mask[:, None, None, :].float()) * torch.finfo(torch.float32).min
            mask4d = mask4d.expand(-1, 1, mask.shape[1], -1)
            hidden = model(input_ids=enc["input_ids"], attention_mask=mask4d, use_cache=False).last_hidden_state
            hidden = hidden.masked_fill(~mask[..., None].bool(), 0.0)
            pooled = hidden.sum(dim=1) / mask.sum(dim=1)[..., None]
            (pooled @ score.T).sigmoid()
            pairs += len(docs)
    return pairs / (time.perf_counter() - started)


def naive_st(folder: Path, requests: list[tuple[str, list[str]]], max_length: int) -> float:
    from sentence_transformers import CrossEncoder

    model = CrossEncoder(str(folder), device="cpu", max_length=max_length)
    pairs, started = 0, time.perf_counter()
    for query, docs in requests:
        model.predict([(query, d) for d in docs], batch_size=32, show_progress_bar=False)
        pairs += len(docs)
    return pairs / (time.perf_counter() - started)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--family", choices=sorted(SHAPES), required=True)
    ap.add_argument("--requests", type=int, default=6)
    ap.add_argument("--docs", type=int, default=16)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--min-words", type=int, default=20)
    ap.add_argument("--max-words", type=int, default=150)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--text", default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--logdir", type=Path, default=Path(tempfile.gettempdir()))
    args = ap.parse_args()
    args.set = []
    with tempfile.TemporaryDirectory() as tmp:
        args.model = build(args.family, Path(tmp))
        requests = build_requests(args)
        print(f"{args.family}: {SHAPES[args.family]}; {len(requests)} requests x {args.docs} documents of "
              f"{args.min_words}-{args.max_words} words, max_length {args.max_length}")
        warm = requests[:1]
        for name, mode in (("ours (default)", {}), ("ours (RERANKER_DTYPE=float32)", {"RERANKER_DTYPE": "float32"})):
            port = free_port()
            proc = start_ours(args, port, mode, name="family-" + name.split()[0])
            try:
                url = f"http://127.0.0.1:{port}"
                asyncio.run(run_load(url, "native", warm, 1, {}))
                result = asyncio.run(run_load(url, "native", requests, args.concurrency, {}))
            finally:
                proc.terminate()
                proc.wait(60)
            print(f"{name}: {result['pairs_per_s']:.1f} pairs/s (statuses {dict(result['statuses'])})")
        naive = naive_nemotron if args.family == "nemotron" else naive_st
        naive(args.model, warm, args.max_length)
        print(f"naive reference (float32, one request at a time): {naive(args.model, requests, args.max_length):.1f} "
              "pairs/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
