#!/usr/bin/env python3
"""Overload test: many concurrent clients with large requests against a small queue.

Starts reranker-serve on a model with a deliberately small queue and short deadline, fires
--clients concurrent clients for --seconds (each sends large requests back to back, mixing
dialects), then checks what must hold:

  * every request got an answer (no hang, no connection error) within its client timeout;
  * every answer is 200, or 429/503/504 in the dialect's error shape, 429/503 with Retry-After;
  * afterwards the server is healthy and still correct (a request scores as it did before).

    python scripts/overload.py --model /tmp/models/xlmr-mini --clients 64 --seconds 30

Traffic goes to 127.0.0.1 only; the loop is bounded in time and stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
ERROR_FIELD = {"/rerank": "error", "/v1/rerank": "message", "/v2/rerank": "message", "/api/v1/rerank": "detail"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args: argparse.Namespace, port: int) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RERANKER_")}
    env.update(
        RERANKER_MODEL_PATH=str(args.model), RERANKER_PORT=str(port), RERANKER_USE_OFFLINE_MODE="true",
        RERANKER_MAX_QUEUE=str(args.max_queue), RERANKER_MAX_DOCUMENTS=str(args.docs),
        RERANKER_REQUEST_TIMEOUT=str(args.request_timeout), RERANKER_LOG_LEVEL="warning", RERANKER_DTYPE="float32",
    )
    log = open(args.log, "w")
    proc = subprocess.Popen([sys.executable, "-m", "reranker_serve"], env=env, cwd=ROOT, stdout=log,
                            stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise SystemExit(f"server exited; see {args.log}")
        time.sleep(0.3)
    raise SystemExit("server not ready")


def body(query: str, docs: list[str]) -> dict:
    return {"query": query, "documents": docs}


async def client_loop(url: str, args: argparse.Namespace, stop_at: float, seed: int, out: dict) -> None:
    rng = random.Random(seed)
    words = "the quick brown fox jumps over a lazy dog while computers rank documents for queries".split()
    async with httpx.AsyncClient(base_url=url, timeout=args.client_timeout) as client:
        while time.monotonic() < stop_at:
            path = rng.choice(list(ERROR_FIELD))
            docs = [" ".join(rng.choices(words, k=rng.randint(20, 200))) for _ in range(args.docs)]
            started = time.monotonic()
            try:
                r = await client.post(path, json=body("which documents rank", docs))
            except httpx.HTTPError as exc:
                out["failures"].append(f"{path}: {type(exc).__name__} after {time.monotonic() - started:.1f}s")
                continue
            out["latency"].append(time.monotonic() - started)
            out["status"][(path, r.status_code)] += 1
            if r.status_code == 200:
                results = r.json() if path != "/rerank" else r.json()["results"]
                n = len(results if isinstance(results, list) else results["results"])
                if n != len(docs):
                    out["failures"].append(f"{path}: 200 with {n} results for {len(docs)} documents")
            elif r.status_code in (429, 503, 504):
                if ERROR_FIELD[path] not in r.json():
                    out["failures"].append(f"{path}: {r.status_code} not in the dialect's shape: {r.text[:100]}")
                if r.status_code in (429, 503) and "retry-after" not in r.headers:
                    out["failures"].append(f"{path}: {r.status_code} without Retry-After")
                await asyncio.sleep(min(float(r.headers.get("retry-after", "1")), 1.0) * rng.random())
            else:
                out["failures"].append(f"{path}: unexpected {r.status_code}: {r.text[:100]}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--docs", type=int, default=100, help="documents per request")
    ap.add_argument("--max-queue", type=int, default=400, help="RERANKER_MAX_QUEUE for the run (pairs)")
    ap.add_argument("--request-timeout", type=float, default=10, help="RERANKER_REQUEST_TIMEOUT for the run")
    ap.add_argument("--client-timeout", type=float, default=60, help="a request slower than this counts as hung")
    ap.add_argument("--log", default="/tmp/overload-server.log")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_server(args, port)
    try:
        probe = {"query": "which documents rank", "documents": ["computers rank documents", "a lazy dog"]}
        before = httpx.post(f"{url}/rerank", json=probe).json()["results"]
        out: dict = {"status": Counter(), "latency": [], "failures": []}
        stop_at = time.monotonic() + args.seconds
        started = time.monotonic()

        async def run() -> None:
            await asyncio.gather(*(client_loop(url, args, stop_at, seed, out) for seed in range(args.clients)))

        asyncio.run(run())
        elapsed = time.monotonic() - started
        health = httpx.get(f"{url}/health", timeout=5).status_code
        ready = httpx.get(f"{url}/ready", timeout=5).status_code
        after = httpx.post(f"{url}/rerank", json=probe, timeout=30).json()["results"]
        same = [x["index"] for x in before] == [x["index"] for x in after] and all(
            abs(a["relevance_score"] - b["relevance_score"]) < 1e-5 for a, b in zip(before, after)
        )
        metrics = httpx.get(f"{url}/metrics", timeout=5).text
        depth = next((float(l.split()[-1]) for l in metrics.splitlines() if l.startswith("reranker_queue_depth ")), None)
    finally:
        proc.terminate()
        code = proc.wait(60)

    by_status = Counter()
    for (_, status), n in out["status"].items():
        by_status[status] += n
    lat = sorted(out["latency"])
    report = {
        "clients": args.clients, "seconds": round(elapsed, 1), "docs_per_request": args.docs,
        "max_queue_pairs": args.max_queue, "request_timeout_s": args.request_timeout,
        "answered": len(lat), "by_status": {str(k): v for k, v in sorted(by_status.items())},
        "by_route_status": {f"{p} {s}": n for (p, s), n in sorted(out["status"].items())},
        "max_latency_s": round(lat[-1], 2) if lat else None, "failures": out["failures"][:20],
        "failure_count": len(out["failures"]), "healthy_after": health == 200 and ready == 200,
        "correct_after": same, "queue_depth_after": depth, "exit_code": code,
    }
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    ok = not out["failures"] and report["healthy_after"] and same and code == 0 and depth == 0
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
