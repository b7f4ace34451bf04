"""Recall@k, MRR@k and nDCG@k, as trec_eval / ir-measures define them.

- relevant: judged relevance > 0; unjudged documents count as not relevant.
- nDCG@k: gain = the judged relevance, discount log2(rank + 1), ideal from the qrels.
- Averages run over the queries with at least one relevant document; a query that is missing
  from the run scores 0 (trec_eval's -c).
"""

from __future__ import annotations

import math
from typing import Mapping

__all__ = ["evaluate", "mrr_at", "ndcg_at", "ranking", "recall_at"]

Run = Mapping[str, Mapping[str, float]]
Qrels = Mapping[str, Mapping[str, int]]


def ranking(scores: Mapping[str, float]) -> list[str]:
    """Documents by score, best first; ties broken by document id, descending, like trec_eval."""
    return [d for d, _ in sorted(scores.items(), key=lambda kv: (kv[1], kv[0]), reverse=True)]


def recall_at(ranked: list[str], rels: Mapping[str, int], k: int) -> float:
    relevant = {d for d, r in rels.items() if r > 0}
    return len(relevant.intersection(ranked[:k])) / len(relevant) if relevant else 0.0


def mrr_at(ranked: list[str], rels: Mapping[str, int], k: int) -> float:
    for rank, doc in enumerate(ranked[:k], start=1):
        if rels.get(doc, 0) > 0:
            return 1.0 / rank
    return 0.0


def ndcg_at(ranked: list[str], rels: Mapping[str, int], k: int) -> float:
    dcg = sum(rels.get(d, 0) / math.log2(i + 2) for i, d in enumerate(ranked[:k]) if rels.get(d, 0) > 0)
    ideal = sorted((r for r in rels.values() if r > 0), reverse=True)[:k]
    idcg = sum(r / math.log2(i + 2) for i, r in enumerate(ideal))
    return dcg / idcg if idcg > 0 else 0.0


_MEASURES = {"Recall": recall_at, "MRR": mrr_at, "nDCG": ndcg_at}


def evaluate(run: Run, qrels: Qrels, ks: tuple[int, ...] = (10,)) -> dict[str, float]:
    """Mean of each measure at each k, e.g. {"nDCG@10": 0.41, "MRR@10": ..., "Recall@10": ...}."""
    queries = [q for q, rels in qrels.items() if any(r > 0 for r in rels.values())]
    out = {}
    for k in ks:
        for name, fn in _MEASURES.items():
            values = [fn(ranking(run.get(q, {})), qrels[q], k) for q in queries]
            out[f"{name}@{k}"] = sum(values) / len(values) if values else 0.0
    return out
