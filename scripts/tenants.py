#!/usr/bin/env python3
"""Benchmarks of the multi-tenant path: priorities under a batch flood, and what keys cost.

    # an interactive client (1 request of 20 docs at a time) beside a batch flood (16 clients x 100
    # docs): its p50/p99 with the flood sent as X-Priority: batch ("on") and without ("off")
    python scripts/tenants.py --model /tmp/m/xlmr-mini --priorities --seconds 30
    # the key/limit/priority path's cost per request: one tiny request at a time, server-side time
    # (X-Total-Time) with RERANKER_API_KEYS (a key with limits) against an open server
    python scripts/tenants.py --model /tmp/m/xlmr-mini --overhead --repeat 400

Text comes from Vaswani (../shared/data/vaswani) as in scripts/benchmark.py, whose helpers this
script uses. Runs alternate A/B (off, on, off, on) since the machines are noisy.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchmark as bm  # noqa: E402  (the load generator's text and server helpers)

KEY = "sk-bench-key-0123456789"
KEYS = json.dumps({"bench": {"key": KEY, "requests_per_second": 1e6, "pairs_per_minute": 1e9}})


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _priorities_run(url: str, docs: list[str], *, seconds: float, flood_priority: str | None) -> dict:
    rng = random.Random(0)
    stop = time.monotonic() + seconds
    interactive: list[float] = []
    flood_pairs = 0
    headers = {"X-Priority": flood_priority} if flood_priority else {}

    async def flood(client: httpx.AsyncClient) -> None:
        nonlocal flood_pairs
        while time.monotonic() < stop:
            body = {"query": "information retrieval", "documents": rng.sample(docs, 100)}
            r = await client.post(f"{url}/rerank", json=body, headers=headers)
            if r.status_code == 200:
                flood_pairs += 100
            else:
                await asyncio.sleep(0.2)  # 429: the admission control said no

    async def chat(client: httpx.AsyncClient) -> None:
        await asyncio.sleep(1.0)  # let the flood fill the queue first
        while time.monotonic() < stop:
            body = {"query": "what is a cross encoder", "documents": rng.sample(docs, 20)}
            started = time.perf_counter()
            r = await client.post(f"{url}/rerank", json=body)
            if r.status_code == 200:
                interactive.append(time.perf_counter() - started)

    async with httpx.AsyncClient(timeout=300, limits=httpx.Limits(max_connections=64)) as client:
        await asyncio.gather(chat(client), *(flood(client) for _ in range(16)))
    return {
        "flood": flood_priority or "interactive (no header)",
        "interactive_requests": len(interactive),
        "interactive_p50_ms": round(statistics.median(interactive) * 1000, 1) if interactive else None,
        "interactive_p99_ms": round(_percentile(interactive, 0.99) * 1000, 1) if interactive else None,
        "flood_pairs_per_s": round(flood_pairs / seconds, 1),
    }


def priorities(args: argparse.Namespace) -> list[dict]:
    docs = [d for _, batch in bm.build_requests(args) for d in batch]
    port = bm.free_port()
    proc = bm.start_ours(args, port)
    url = f"http://127.0.0.1:{port}"
    results = []
    try:
        for flood_priority in (None, "batch", None, "batch"):
            result = asyncio.run(_priorities_run(url, docs, seconds=args.seconds, flood_priority=flood_priority))
            print(json.dumps(result))
            results.append(result)
    finally:
        proc.terminate()
        proc.wait(60)
    return results


def _server_times(url: str, headers: dict, repeat: int) -> list[float]:
    body = {"query": "capital of France", "documents": [f"document number {i} about Paris" for i in range(10)]}
    times = []
    with httpx.Client(timeout=60) as client:
        for _ in range(20):  # warm up
            client.post(f"{url}/rerank", json=body, headers=headers)
        for _ in range(repeat):
            r = client.post(f"{url}/rerank", json=body, headers=headers)
            r.raise_for_status()
            times.append(float(r.headers["x-total-time"]))
    return times


def overhead(args: argparse.Namespace) -> list[dict]:
    open_port, keyed_port = bm.free_port(), bm.free_port()
    base_set = list(args.set or [])
    open_proc = bm.start_ours(args, open_port)
    args.set = base_set + [f"API_KEYS={KEYS}"]
    keyed_proc = bm.start_ours(args, keyed_port)
    results = []
    try:
        for _ in range(2):  # A/B alternating
            for name, port, headers in (("open", open_port, {}),
                                        ("keys+limits+priority", keyed_port,
                                         {"Authorization": f"Bearer {KEY}", "X-Priority": "interactive"})):
                times = _server_times(f"http://127.0.0.1:{port}", headers, args.repeat)
                result = {"server": name, "p50_ms": round(statistics.median(times), 3),
                          "mean_ms": round(statistics.fmean(times), 3)}
                print(json.dumps(result))
                results.append(result)
    finally:
        for proc in (open_proc, keyed_proc):
            proc.terminate()
            proc.wait(60)
    return results


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--priorities", action="store_true")
    ap.add_argument("--overhead", action="store_true")
    ap.add_argument("--seconds", type=float, default=30.0, help="--priorities: length of each run")
    ap.add_argument("--repeat", type=int, default=400, help="--overhead: requests timed per run")
    ap.add_argument("--set", action="append", metavar="KEY=VALUE", help="RERANKER_KEY for the server (repeatable)")
    # What scripts/benchmark.py's helpers read.
    ap.add_argument("--data", type=Path, default=bm.DEFAULT_DATA)
    ap.add_argument("--text")
    ap.add_argument("--requests", type=int, default=40)
    ap.add_argument("--docs", type=int, default=100)
    ap.add_argument("--min-words", type=int, default=20)
    ap.add_argument("--max-words", type=int, default=300)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--logdir", type=Path, default=Path("/tmp"))
    args = ap.parse_args()
    out = {"machine": bm.machine()}
    if args.priorities:
        out["priorities"] = priorities(args)
    if args.overhead:
        out["overhead"] = overhead(args)
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
