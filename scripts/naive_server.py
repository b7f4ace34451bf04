#!/usr/bin/env python3
"""The naive, seed-style rerank server, kept as the benchmark baseline.

One `CrossEncoder.predict(batch_size=32)` per request, fp32 (`--fp16`: half precision, as
`use_fp16=True` users run it on a GPU), on CUDA when there is one, in FastAPI's thread pool:
requests never share a batch and documents of any length are padded together. Speaks the
native `/rerank` shape only. Not part of the product: `scripts/benchmark.py --baseline` starts it.

    python scripts/naive_server.py --model models/bge-reranker-base --port 8001
"""

from __future__ import annotations

import argparse

import torch
import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel
from sentence_transformers import CrossEncoder


class Request(BaseModel):
    query: str
    documents: list[str]
    top_n: int | None = None


def build(model_path: str, max_length: int, *, fp16: bool = False) -> FastAPI:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = CrossEncoder(model_path, device=device, max_length=max_length, local_files_only=True,
                         model_kwargs={"dtype": torch.float16 if fp16 else torch.float32})
    app = FastAPI()

    @app.get("/ready")
    def ready() -> dict:
        return {"status": "ready"}

    @app.post("/rerank")
    def rerank(req: Request) -> dict:
        scores = model.predict([(req.query, d) for d in req.documents], batch_size=32, show_progress_bar=False)
        order = sorted(range(len(scores)), key=lambda i: -float(scores[i]))[: req.top_n or None]
        return {"model": model_path, "results": [{"index": i, "relevance_score": float(scores[i])} for i in order]}

    return app


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--port", type=int, default=8001)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--fp16", action="store_true", help="half precision (GPU users' use_fp16=True)")
    a = ap.parse_args()
    uvicorn.run(build(a.model, a.max_length, fp16=a.fp16), host="127.0.0.1", port=a.port, log_level="warning")


if __name__ == "__main__":
    main()
