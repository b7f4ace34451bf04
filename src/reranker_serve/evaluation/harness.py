"""The evaluation harness: first stage → rerank the top-k → metrics, side by side.

    reranker-serve evaluate ../shared/data/vaswani --url http://127.0.0.1:8000
    reranker-serve evaluate beir/scifact --model models/bge-reranker-v2-m3 --top-k 100
    python scripts/evaluate.py COLLECTION [--run first_stage.trec] [--json out.json]

Reranking goes through a running service (``--url``, any dialect) or in-process through the
same engine the server uses (``--model``). Finished queries are appended to a checkpoint file,
so an interrupted run (Ctrl-C) resumes where it stopped when started again with the same
options.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

from .data import Collection, load_collection, load_trec, read_run
from .metrics import evaluate, ranking

__all__ = ["HttpScorer", "bm25_run", "main", "rerank_run", "run_evaluation"]

Scorer = Callable[[str, Sequence[str]], list[float]]


# -- first stage --------------------------------------------------------------------------------
def bm25_run(collection: Collection, queries: list[str], top_k: int) -> dict[str, dict[str, float]]:
    """BM25 (bm25s, English stopwords) over the whole corpus: the top_k documents per query."""
    import bm25s

    ids = list(collection.corpus)
    retriever = bm25s.BM25()
    retriever.index(bm25s.tokenize([collection.corpus[d] for d in ids], stopwords="en", show_progress=False),
                    show_progress=False)
    tokens = bm25s.tokenize([collection.queries[q] for q in queries], stopwords="en", show_progress=False)
    docs, scores = retriever.retrieve(tokens, k=min(top_k, len(ids)), show_progress=False)
    return {q: {ids[int(d)]: float(s) for d, s in zip(docs[i], scores[i]) if float(s) > 0}
            for i, q in enumerate(queries)}


# -- rerankers ----------------------------------------------------------------------------------
_ROUTES = {
    "native": ("/rerank", lambda q, d: {"query": q, "documents": d}),
    "tei": ("/rerank", lambda q, d: {"query": q, "texts": d}),
    "cohere-v1": ("/v1/rerank", lambda q, d: {"query": q, "documents": d}),
    "cohere-v2": ("/v2/rerank", lambda q, d: {"query": q, "documents": d}),
    "jina": ("/api/v1/rerank", lambda q, d: {"query": q, "documents": d, "return_documents": False}),
}


class HttpScorer:
    """Scores through a running service in any of its dialects (or TEI, Cohere, Jina, infinity)."""

    def __init__(self, url: str, *, dialect: str = "native", api_key: str | None = None, model: str | None = None,
                 retries: int = 5) -> None:
        import httpx

        self._client = httpx.Client(base_url=url.rstrip("/"), timeout=600,
                                    headers={"Authorization": f"Bearer {api_key}"} if api_key else {})
        self._path, self._body = _ROUTES[dialect]
        self._model = {"model": model} if model else {}  # none: the server's default model
        self._retries = retries

    def __call__(self, query: str, documents: Sequence[str]) -> list[float]:
        for attempt in range(self._retries + 1):
            r = self._client.post(self._path, json={**self._body(query, list(documents)), **self._model})
            if r.status_code in (429, 503) and attempt < self._retries:
                time.sleep(float(r.headers.get("retry-after", "1")))  # the server said when
                continue
            if r.status_code != 200:
                raise RuntimeError(f"{self._path} answered {r.status_code}: {r.text[:300]}")
            reply = r.json()
            results = reply if isinstance(reply, list) else reply["results"]
            scores = [0.0] * len(documents)
            for item in results:
                scores[item["index"]] = float(item.get("relevance_score", item.get("score", 0.0)))
            return scores
        raise AssertionError("unreachable")


class LocalScorer:
    """Scores in-process through the server's own engine (no HTTP)."""

    def __init__(self, model: Path, **settings: object) -> None:
        from ..config import Settings
        from ..engine import Engine
        from ..service import RerankService
        from ..registry import ModelRegistry

        config = Settings(_env_file=None, model_path=model, use_offline_mode=True, **settings)  # type: ignore[arg-type]
        self._loop = asyncio.new_event_loop()
        self._reranker = RerankService(ModelRegistry(config, [Engine.load(config)]))

    def __call__(self, query: str, documents: Sequence[str]) -> list[float]:
        from ..service import RerankQuery

        result = self._loop.run_until_complete(self._reranker.rerank(RerankQuery(query=query, documents=documents)))
        scores = [0.0] * len(documents)
        for r in result.results:
            scores[r.index] = r.score
        return scores

    def close(self) -> None:
        for engine in self._reranker.registry.engines():
            engine.stop()
        self._loop.close()


# -- the harness ----------------------------------------------------------------------------------
def rerank_run(
    collection: Collection,
    first: dict[str, dict[str, float]],
    scorer: Scorer,
    *,
    top_k: int,
    checkpoint: Path | None = None,
    progress: bool = True,
) -> dict[str, dict[str, float]]:
    """Rerank each query's top_k first-stage documents; resumes from ``checkpoint``."""
    from tqdm import tqdm

    done: dict[str, dict[str, float]] = {}
    if checkpoint is not None and checkpoint.exists():
        for line in checkpoint.read_text(encoding="utf-8").splitlines():
            if line.strip():
                entry = json.loads(line)
                done[entry["qid"]] = entry["scores"]
    todo = [q for q in first if q not in done]
    sink = open(checkpoint, "a", encoding="utf-8") if checkpoint is not None else None
    try:
        for qid in tqdm(todo, desc="reranking", unit="query", disable=not progress, initial=len(done),
                        total=len(first)):
            candidates = ranking(first[qid])[:top_k]
            if not candidates:
                done[qid] = {}
                continue
            scores = scorer(collection.queries[qid], [collection.corpus[d] for d in candidates])
            done[qid] = dict(zip(candidates, scores))
            if sink is not None:  # one line per finished query: an interruption loses nothing
                sink.write(json.dumps({"qid": qid, "scores": done[qid]}) + "\n")
                sink.flush()
    finally:
        if sink is not None:
            sink.close()
    return {q: done[q] for q in first}


def run_evaluation(
    collection: Collection,
    scorer: Scorer | None,
    *,
    top_k: int = 100,
    ks: tuple[int, ...] = (1, 5, 10),
    run: dict[str, dict[str, float]] | None = None,
    checkpoint: Path | None = None,
    max_queries: int | None = None,
    progress: bool = True,
) -> dict:
    if any(k > top_k for k in ks):
        raise ValueError(f"every cut-off must be ≤ --top-k ({top_k}): got {ks}")
    queries = collection.judged_queries()[:max_queries]
    if not queries:
        raise ValueError("the collection has no query with a relevant document")
    first = ({q: dict(run.get(q, {})) for q in queries} if run is not None else bm25_run(collection, queries, top_k))
    # The first stage is judged on the same top_k it hands to the reranker: a like-for-like view.
    first = {q: dict(sorted(s.items(), key=lambda kv: kv[1], reverse=True)[:top_k]) for q, s in first.items()}
    qrels = {q: collection.qrels[q] for q in queries}
    report = {
        "collection": collection.name,
        "queries": len(queries),
        "documents": len(collection.corpus),
        "top_k": top_k,
        "first_stage": "run file" if run is not None else "BM25 (bm25s)",
        "metrics": {"first_stage": evaluate(first, qrels, ks)},
    }
    if scorer is not None:
        started = time.perf_counter()
        reranked = rerank_run(collection, first, scorer, top_k=top_k, checkpoint=checkpoint, progress=progress)
        report["rerank_seconds"] = round(time.perf_counter() - started, 1)
        report["metrics"]["reranked"] = evaluate(reranked, qrels, ks)
    return report


def format_table(report: dict) -> str:
    metrics = report["metrics"]
    columns = list(metrics)
    names = list(metrics["first_stage"])
    lines = [f"{report['collection']}: {report['queries']} queries, {report['documents']} documents, "
             f"top {report['top_k']} reranked",
             f"| {'measure':<10} | " + " | ".join(f"{c:>11}" for c in columns) + (" | {:>7} |".format("Δ") if len(columns) == 2 else " |"),
             "|" + "-" * 12 + "|" + "|".join("-" * 13 for _ in columns) + ("|---------|" if len(columns) == 2 else "|")]
    for name in names:
        values = [metrics[c][name] for c in columns]
        row = f"| {name:<10} | " + " | ".join(f"{v:>11.4f}" for v in values)
        row += f" | {values[1] - values[0]:>+7.4f} |" if len(values) == 2 else " |"
        lines.append(row)
    return "\n".join(lines)


def _checkpoint_for(args: argparse.Namespace, source: str) -> Path:
    key = json.dumps([str(args.collection), args.split, str(args.run), args.top_k, source, args.max_queries])
    return Path(".evaluate-cache") / f"{hashlib.sha256(key.encode()).hexdigest()[:16]}.jsonl"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="reranker-serve evaluate", description=__doc__.splitlines()[0])
    ap.add_argument("collection", type=Path, nargs="?", help="BEIR folder, or a TREC folder (corpus, topics, qrels)")
    ap.add_argument("--corpus", type=Path, help="TREC corpus file or folder (with --topics and --qrels)")
    ap.add_argument("--topics", type=Path)
    ap.add_argument("--qrels", type=Path)
    ap.add_argument("--split", default="test", help="BEIR qrels split (default: test)")
    ap.add_argument("--run", type=Path, help="first-stage TREC run file instead of BM25")
    ap.add_argument("--top-k", type=int, default=100, help="first-stage documents reranked per query")
    ap.add_argument("--k", default="1,5,10", help="cut-offs, comma-separated (default 1,5,10)")
    source = ap.add_mutually_exclusive_group()
    source.add_argument("--url", help="rerank through this running service")
    source.add_argument("--model", type=Path, help="rerank in-process with this model folder")
    ap.add_argument("--dialect", choices=sorted(_ROUTES), default="native", help="API dialect for --url")
    ap.add_argument("--served-model", help="with --url: the `model` to ask for (default: the server's default)")
    ap.add_argument("--api-key")
    ap.add_argument("--max-queries", type=int, help="evaluate only the first N judged queries")
    ap.add_argument("--checkpoint", type=Path, help="resume file (default: .evaluate-cache/<hash>.jsonl)")
    ap.add_argument("--fresh", action="store_true", help="ignore finished queries in the checkpoint")
    ap.add_argument("--json", type=Path, help="write the report as JSON here")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)

    try:
        if args.corpus or args.topics or args.qrels:
            if not (args.corpus and args.topics and args.qrels):
                ap.error("--corpus, --topics and --qrels go together")
            collection = load_trec(args.corpus, args.topics, args.qrels, name=args.corpus.name)
        elif args.collection:
            collection = load_collection(args.collection, split=args.split)
        else:
            ap.error("give a collection folder, or --corpus/--topics/--qrels")
        ks = tuple(int(k) for k in args.k.split(","))
        run = read_run(args.run) if args.run else None
    except (OSError, ValueError) as exc:
        print(f"evaluate: {exc}", file=sys.stderr)
        return 2

    scorer: Scorer | None = None
    if args.url:
        scorer = HttpScorer(args.url, dialect=args.dialect, api_key=args.api_key, model=args.served_model)
    elif args.model:
        scorer = LocalScorer(args.model)
    checkpoint = None
    if scorer is not None:
        checkpoint = args.checkpoint or _checkpoint_for(args, args.url or str(args.model))
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
        if args.fresh and checkpoint.exists():
            checkpoint.unlink()
    try:
        report = run_evaluation(collection, scorer, top_k=args.top_k, ks=ks, run=run, checkpoint=checkpoint,
                                max_queries=args.max_queries, progress=not args.no_progress)
    except KeyboardInterrupt:
        print(f"\nevaluate: interrupted; finished queries are kept in {checkpoint}", file=sys.stderr)
        return 130
    except (ValueError, RuntimeError) as exc:
        print(f"evaluate: {exc}", file=sys.stderr)
        return 1
    finally:
        if isinstance(scorer, LocalScorer):
            scorer.close()
    print(format_table(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0
