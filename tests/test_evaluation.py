"""The evaluation harness: metrics, agreement with ir-measures, loaders, an end-to-end run."""

from __future__ import annotations

import json
import math
import random

import ir_measures
import pytest
from ir_measures import RR, R, nDCG

from reranker_serve.evaluation.data import load_beir, load_collection, load_trec, read_run
from reranker_serve.evaluation.harness import HttpScorer, main, run_evaluation
from reranker_serve.evaluation.metrics import evaluate, mrr_at, ndcg_at, recall_at


def test_hand_made_values():
    rels = {"d1": 1, "d2": 2, "d3": 0}
    ranked = ["d3", "d1", "d2", "d9"]
    assert mrr_at(ranked, rels, 1) == 0 and mrr_at(ranked, rels, 2) == 0.5 and mrr_at(["x"], rels, 5) == 0
    assert recall_at(ranked, rels, 2) == 0.5 and recall_at(ranked, rels, 3) == 1.0
    ideal = 2 + 1 / math.log2(3)
    assert ndcg_at(ranked, rels, 3) == pytest.approx((1 / math.log2(3) + 2 / math.log2(4)) / ideal)
    assert ndcg_at(["d2", "d1"], rels, 2) == pytest.approx(1.0)
    # A judged query missing from the run scores 0; a query without relevant documents is skipped.
    qrels = {"q1": rels, "q2": {"d5": 1}, "q3": {"d6": 0}}
    scores = evaluate({"q1": {"d2": 3.0, "d1": 2.0}}, qrels, ks=(2,))
    assert scores == {"Recall@2": 0.5, "MRR@2": 0.5, "nDCG@2": pytest.approx(0.5)}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_agrees_with_ir_measures_on_random_runs(seed):
    rng = random.Random(seed)
    qrels, run = {}, {}
    for q in range(40):
        docs = [f"d{i}" for i in range(60)]
        judged = rng.sample(docs, 25)
        qrels[f"q{q}"] = {d: rng.choice([0, 0, 1, 2, 3]) for d in judged}
        if not any(qrels[f"q{q}"].values()):
            qrels[f"q{q}"][judged[0]] = 1
        run[f"q{q}"] = {d: rng.random() for d in rng.sample(docs, 50)}
    ks = (1, 5, 10, 20)
    ours = evaluate(run, qrels, ks)
    measures = [m @ k for k in ks for m in (nDCG, RR, R)]
    qrel_list = [ir_measures.Qrel(q, d, r) for q, rels in qrels.items() for d, r in rels.items()]
    run_list = [ir_measures.ScoredDoc(q, d, s) for q, scores in run.items() for d, s in scores.items()]
    theirs = ir_measures.calc_aggregate(measures, qrel_list, run_list)
    for k in ks:
        assert ours[f"nDCG@{k}"] == pytest.approx(theirs[nDCG @ k], abs=1e-9)
        assert ours[f"MRR@{k}"] == pytest.approx(theirs[RR @ k], abs=1e-9)
        assert ours[f"Recall@{k}"] == pytest.approx(theirs[R @ k], abs=1e-9)


DOCS = {
    "d1": "Paris is the capital and largest city of France.",
    "d2": "Berlin is the capital of Germany.",
    "d3": "The cat sat on the mat near the door.",
    "d4": "France borders Spain, Italy and Germany.",
    "d5": "Deep learning models learn representations from data.",
    "d6": "Madrid is the capital of Spain and its largest city.",
}
QUERIES = {"1": "capital of France", "2": "capital of Spain", "3": "neural networks deep learning", "4": "no judgments"}
QRELS = {"1": {"d1": 2, "d4": 1}, "2": {"d6": 1}, "3": {"d5": 1, "d3": 0}}


@pytest.fixture()
def beir(tmp_path):
    folder = tmp_path / "tiny-beir"
    (folder / "qrels").mkdir(parents=True)
    (folder / "corpus.jsonl").write_text("\n".join(json.dumps({"_id": k, "title": "", "text": v}) for k, v in DOCS.items()))
    (folder / "queries.jsonl").write_text("\n".join(json.dumps({"_id": k, "text": v}) for k, v in QUERIES.items()))
    rows = ["query-id\tcorpus-id\tscore"] + [f"{q}\t{d}\t{r}" for q, rels in QRELS.items() for d, r in rels.items()]
    (folder / "qrels" / "test.tsv").write_text("\n".join(rows) + "\n")
    return folder


@pytest.fixture()
def trec(tmp_path):
    folder = tmp_path / "tiny-trec"
    (folder / "corpus").mkdir(parents=True)
    (folder / "corpus" / "docs.trec").write_text(
        "".join(f"<DOC>\n<DOCNO>{k}</DOCNO>\n<TEXT>{v}</TEXT>\n</DOC>\n" for k, v in DOCS.items()))
    (folder / "topics.trec").write_text(
        "".join(f"<top>\n<num>{k}</num><title>\n{v}\n</title>\n</top>\n" for k, v in QUERIES.items()))
    (folder / "qrels").write_text("".join(f"{q} 0 {d} {r}\n" for q, rels in QRELS.items() for d, r in rels.items()))
    return folder


def test_loaders_agree(beir, trec):
    a = load_beir(beir)
    b = load_collection(trec)
    c = load_trec(trec / "corpus" / "docs.trec", trec / "topics.trec", trec / "qrels")
    for col in (a, b, c):
        assert col.corpus == DOCS and col.queries == QUERIES and col.qrels == QRELS
        assert col.judged_queries() == ["1", "2", "3"]
    assert load_collection(beir).corpus == DOCS


def test_loader_reads_the_shared_vaswani_layout():
    from pathlib import Path

    folder = Path(__file__).resolve().parents[2] / "shared" / "data" / "vaswani"
    if not folder.exists():
        pytest.skip("../shared/data/vaswani is not beside this checkout")
    col = load_collection(folder)
    assert len(col.corpus) == 11429 and len(col.queries) == 93 and len(col.judged_queries()) == 93


def test_end_to_end_against_the_app(beir, server, reference, tmp_path):
    collection = load_beir(beir)
    checkpoint = tmp_path / "ckpt.jsonl"
    report = run_evaluation(collection, HttpScorer(server.url, dialect="cohere-v2"), top_k=5, ks=(1, 5),
                            checkpoint=checkpoint, progress=False)
    assert report["queries"] == 3 and set(report["metrics"]) == {"first_stage", "reranked"}
    # Independent check: rerank BM25's candidates with the reference scores, compute the metrics.
    finished = [json.loads(l) for l in checkpoint.read_text().splitlines()]
    assert [f["qid"] for f in finished] == ["1", "2", "3"]
    expected_run = {}
    for entry in finished:
        q, candidates = entry["qid"], list(entry["scores"])
        ref = reference.scores(QUERIES[q], [DOCS[d] for d in candidates])
        for d, s in zip(candidates, ref):
            assert entry["scores"][d] == pytest.approx(s, abs=1e-5)
        expected_run[q] = dict(zip(candidates, ref))
    assert report["metrics"]["reranked"] == pytest.approx(evaluate(expected_run, QRELS, (1, 5)))

    # Resuming: finished queries come from the checkpoint; the scorer is not called again.
    def must_not_run(query, documents):
        raise AssertionError("resumed queries were scored again")

    again = run_evaluation(collection, must_not_run, top_k=5, ks=(1, 5), checkpoint=checkpoint, progress=False)
    assert again["metrics"] == report["metrics"]


def test_cli_with_a_run_file_and_json(trec, server, tmp_path):
    run_file = tmp_path / "first.trec"
    run_file.write_text("1 Q0 d4 1 9.0 x\n1 Q0 d1 2 8.0 x\n2 Q0 d2 1 5.0 x\n2 Q0 d6 2 4.0 x\n3 Q0 d5 1 1.0 x\n")
    assert read_run(run_file)["1"] == {"d4": 9.0, "d1": 8.0}
    out = tmp_path / "report.json"
    code = main([str(trec), "--run", str(run_file), "--url", server.url, "--dialect", "jina", "--top-k", "2",
                 "--k", "1,2", "--json", str(out), "--checkpoint", str(tmp_path / "c.jsonl"), "--no-progress"])
    assert code == 0
    report = json.loads(out.read_text())
    assert report["first_stage"] == "run file"
    first = report["metrics"]["first_stage"]
    assert first["MRR@1"] == pytest.approx((1 + 0 + 1) / 3)  # d4 is relevant to q1, d2 not to q2 and first["Recall@2"] == pytest.approx(1.0)
    assert set(report["metrics"]["reranked"]) == {"Recall@1", "MRR@1", "nDCG@1", "Recall@2", "MRR@2", "nDCG@2"}


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main([str(tmp_path), "--no-progress"]) == 2
    assert "expected a BEIR folder" in capsys.readouterr().err
