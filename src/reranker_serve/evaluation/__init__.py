"""Two-stage retrieval evaluation: first stage (BM25 or a run file) → rerank → Recall/MRR/nDCG.

    data.py      test collections: BEIR folders and TREC files
    metrics.py   Recall@k, MRR@k, nDCG@k (checked against ir-measures in the tests)
    harness.py   first stage, reranking (over HTTP or in-process), checkpoints, report, CLI
"""
