#!/usr/bin/env python3
"""What the score cache adds to a request that misses: digests of 20 documents, a lookup and a
store (the path every request takes with RERANKER_CACHE_MB > 0), timed in-process.

    .venv/bin/python scripts/cache_cost.py
"""

from __future__ import annotations

import timeit
from types import SimpleNamespace

from reranker_serve.cache import ScoreCache
from reranker_serve.config import ModelSpec
from reranker_serve.models import EncodeOptions


def main() -> None:
    spec = ModelSpec(names=("m",), source="/m", local=True, cache_dir=".", offline=True, model_type="auto",
                     backend="auto", trust_remote_code=False, max_length=512, dtype="auto", batch_size=32,
                     max_batch_tokens=0, max_queue=4096, instruction=None, cutoff_layer=None, compress_ratio=1,
                     compress_layers=(8,))
    model = SimpleNamespace(family="encoder", backend="openvino", dtype_name="bfloat16", device="cpu", max_length=512)
    engine = type("Engine", (), {"spec": spec, "model": model})()  # what the cache reads of an engine
    options = EncodeOptions(max_length=512)
    cache = ScoreCache(max_bytes=64 << 20)
    query, docs = "what is the capital of france", [f"word{i} " * 100 for i in range(20)]  # ~700 characters each
    keys = cache.keys(engine, options, query, docs)  # type: ignore[arg-type]
    n = 2000
    for name, step in (("digests", lambda: cache.keys(engine, options, query, docs)),  # type: ignore[arg-type]
                       ("lookup", lambda: cache.get_many(keys)),
                       ("store", lambda: cache.put_many([(k, 0.5) for k in keys]))):
        best = min(timeit.repeat(step, number=n, repeat=5)) / n
        print(f"{name:>8}: {best * 1e6:6.1f} µs for 20 documents")


if __name__ == "__main__":
    main()
