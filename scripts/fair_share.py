#!/usr/bin/env python3
"""Issue 21, item 1: what a 3-document request waits beside the 725k-token request.

The attack of the issue: a 600-word query, 40 documents of 16 KB (random words, about two
characters a token as in the issue) and ``max_chunks_per_doc: 100``. By default the server
refuses it (RERANKER_MAX_REQUEST_TOKENS); this script raises the cap so the attack is computed,
and measures a normal 3-document request's latency alone, then sent one after the other while
the attack computes (fair queuing in the batcher: batcher.py), and the attack's own time.

    .venv/bin/python scripts/fair_share.py --model /tmp/m/xlmr-mini
    .venv/bin/python scripts/fair_share.py --model /tmp/m/xlmr-mini --default-cap   # the 413 instead

Prints one JSON object. The machine's other load shows in every number: say so with them.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import string
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchmark as bm  # noqa: E402  (the server helpers)


def _word(rng: random.Random) -> str:
    return "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(2, 7)))


def attack() -> dict:
    rng = random.Random(21)
    docs = []
    for _ in range(40):
        words, size = [], 0
        while size < 16 * 1024:
            words.append(_word(rng))
            size += len(words[-1]) + 1
        docs.append(" ".join(words)[: 16 * 1024])
    return {"query": " ".join(_word(rng) for _ in range(600)), "documents": docs, "max_chunks_per_doc": 100}


SMALL = {"query": "What is the capital of France?",
         "documents": ["Paris is the capital of France.", "Berlin is the capital of Germany.", "The cat sat on the mat."]}


# Every request computed: the score cache would answer the repeated 3-document request from memory.
NO_CACHE = {"Cache-Control": "no-cache"}


def queued(url: str) -> float:
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith("reranker_queue_depth{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def latencies(client: httpx.Client, url: str, n: int) -> list[float]:
    out = []
    for _ in range(n):
        started = time.perf_counter()
        r = client.post(f"{url}/rerank", json=SMALL, headers=NO_CACHE)
        out.append(time.perf_counter() - started)
        assert r.status_code == 200, r.text
    return out


def summary(values: list[float]) -> dict:
    ordered = sorted(values)
    return {"n": len(values), "p50_ms": round(1000 * statistics.median(ordered), 1),
            "p95_ms": round(1000 * ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], 1),
            "max_ms": round(1000 * ordered[-1], 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--alone", type=int, default=30, help="3-document requests measured without the attack")
    parser.add_argument("--default-cap", action="store_true", help="keep RERANKER_MAX_REQUEST_TOKENS: expect 413")
    parser.add_argument("--set", action="append", help="NAME=value: a RERANKER_NAME setting for the server")
    args = parser.parse_args()
    args.logdir = Path(tempfile.mkdtemp(prefix="fair-share-"))
    args.set = (args.set or []) + ([] if args.default_cap else ["MAX_REQUEST_TOKENS=100000000", "REQUEST_TIMEOUT=900"])
    port = bm.free_port()
    url = f"http://127.0.0.1:{port}"
    proc = bm.start_ours(args, port)
    body = attack()
    out: dict = {"machine": bm.machine(), "model": str(args.model)}
    try:
        with httpx.Client(timeout=900) as client:
            latencies(client, url, 5)  # warm
            out["alone"] = summary(latencies(client, url, args.alone))
            answer: dict = {}

            def run_attack() -> None:
                started = time.perf_counter()
                r = httpx.post(f"{url}/rerank", json=body, headers=NO_CACHE, timeout=900)
                answer.update(status=r.status_code, seconds=round(time.perf_counter() - started, 1),
                              body=r.json() if r.status_code != 200 else None,
                              tokens=r.json()["usage"]["total_tokens"] if r.status_code == 200 else None)

            worker = threading.Thread(target=run_attack)
            worker.start()
            if args.default_cap:
                worker.join()
                out["attack"] = answer
                print(json.dumps(out, indent=2))
                return 0
            while queued(url) == 0 and worker.is_alive():  # until the attack's windows are queued
                time.sleep(0.01)
            beside: list[float] = []
            while worker.is_alive():
                beside += latencies(client, url, 1)
            worker.join()
            out["beside_attack"] = summary(beside)
            out["attack"] = {k: v for k, v in answer.items() if v is not None}
    finally:
        proc.terminate()
        proc.wait(60)
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
