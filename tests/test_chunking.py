"""Long documents split into overlapping windows, scored by their best window (every dialect)."""

from __future__ import annotations

import math

import pytest

from reranker_serve.models.base import windows
from conftest import QUERY

FILLER = "The committee met on Tuesday to discuss the annual budget and other matters. " * 12


def test_windows():
    ids = list(range(10))
    assert windows(ids, 4, max_chunks=1, overlap=1) == [[0, 1, 2, 3]]
    assert windows(ids, 4, max_chunks=10, overlap=1) == [[0, 1, 2, 3], [3, 4, 5, 6], [6, 7, 8, 9]]
    assert windows(ids, 4, max_chunks=2, overlap=0) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert windows(ids, 20, max_chunks=5, overlap=3) == [ids]
    assert windows(ids, 4, max_chunks=10, overlap=9) == [[0, 1, 2, 3], [2, 3, 4, 5], [4, 5, 6, 7], [6, 7, 8, 9]]


class Windows:
    """The windows a chunked document should get, and their scores, computed from token ids
    with transformers directly (not through the service)."""

    def __init__(self, reference, query: str, doc: str, *, max_length: int = 128, overlap: int = 32) -> None:
        tok = reference.tokenizer
        self.reference = reference
        self.q = tok(query, add_special_tokens=False)["input_ids"]
        d = tok(doc, add_special_tokens=False)["input_ids"]
        size = max_length - 4 - len(self.q)
        step = size - min(overlap, size // 2)
        self.parts = []
        for start in range(0, len(d), step):
            self.parts.append(d[start:start + size])
            if start + size >= len(d):
                break

    def logits(self, n: int) -> list[float]:
        torch = self.reference.torch
        out = []
        with torch.inference_mode():
            for part in self.parts[:n]:
                ids = torch.tensor([[0] + self.q + [2, 2] + part + [2]])
                out.append(float(self.reference.model(input_ids=ids).logits[0, 0]))
        return out

    def tokens(self, n: int) -> int:
        return sum(len(self.q) + len(p) + 4 for p in self.parts[:n])


@pytest.mark.parametrize("path,body_key", [("/rerank", "documents"), ("/v1/rerank", "documents"),
                                           ("/api/v1/rerank", "documents")])
def test_a_document_scores_as_its_best_window(client, reference, path, body_key):
    doc = FILLER + "Paris is the capital and largest city of France."
    w = Windows(reference, QUERY, doc)
    assert len(w.parts) >= 3
    for chunks in (1, 2, len(w.parts), 50):
        r = client.post(path, json={"query": QUERY, body_key: [doc], "max_chunks_per_doc": chunks, "top_n": 1})
        assert r.status_code == 200, r.text
        score = r.json()["results"][0]["relevance_score"]
        best = max(w.logits(chunks))
        assert score == pytest.approx(1 / (1 + math.exp(-best)), abs=1e-5)
        if path == "/rerank":
            assert r.json()["usage"]["total_tokens"] == w.tokens(chunks)


def test_every_window_of_a_long_document_is_scored(client, reference):
    # Longer than one window's worth of characters (128 tokens x 32): text is cut before it is
    # tokenized, and that cut must leave the text of every window a chunked request asks for.
    doc = FILLER * 6 + "Paris is the capital and largest city of France."
    assert len(doc) > 128 * 32
    w = Windows(reference, QUERY, doc)
    r = client.post("/rerank", json={"query": QUERY, "documents": [doc], "max_chunks_per_doc": 100,
                                     "raw_scores": True})
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["total_tokens"] == w.tokens(100)
    assert r.json()["results"][0]["relevance_score"] == pytest.approx(max(w.logits(100)), abs=1e-5)


def test_relevant_text_past_the_first_window_changes_the_ranking(client, reference):
    tails = ["Paris is the capital of France.", "Berlin is the capital of Germany.", "The cat sat on the mat.",
             "Deep learning uses neural networks.", "Madrid is the capital of Spain."]
    docs = [FILLER + t for t in tails]
    best = [max(Windows(reference, QUERY, d).logits(100)) for d in docs]
    first = [Windows(reference, QUERY, d).logits(1)[0] for d in docs]
    assert max(first) - min(first) < 1e-4  # the first windows are all filler: truncation cannot tell them apart
    r = client.post("/rerank", json={"query": QUERY, "documents": docs, "max_chunks_per_doc": 10, "raw_scores": True})
    ranked = [x["index"] for x in r.json()["results"]]
    assert ranked == sorted(range(len(docs)), key=lambda i: -best[i])
    for x in r.json()["results"]:
        assert x["relevance_score"] == pytest.approx(best[x["index"]], abs=1e-5)


def test_server_default_applies_when_the_request_does_not_say(serve, reference):
    srv = serve(max_chunks_per_doc=3)
    doc = FILLER + "Madrid is the capital of Spain."
    w = Windows(reference, QUERY, doc)
    r = srv.client.post("/v2/rerank", json={"query": QUERY, "documents": [doc]})
    assert r.json()["results"][0]["relevance_score"] == pytest.approx(
        1 / (1 + math.exp(-max(w.logits(3)))), abs=1e-5)
    one = srv.client.post("/rerank", json={"query": QUERY, "documents": [doc], "max_chunks_per_doc": 1,
                                            "raw_scores": True})
    assert one.json()["results"][0]["relevance_score"] == pytest.approx(w.logits(1)[0], abs=1e-5)


def test_chunks_count_against_the_queue(serve):
    # (the token cap raised: by default it is 4 documents x the window, which these chunks exceed first)
    srv = serve(max_documents=4, max_queue=8, max_request_tokens=100_000)
    r = srv.client.post("/v1/rerank", json={"query": QUERY, "documents": [FILLER] * 4, "max_chunks_per_doc": 5})
    assert r.status_code == 400 and "chunks included" in r.json()["message"]


@pytest.mark.parametrize("value", [0, 101])
def test_chunk_count_is_validated(client, value):
    r = client.post("/api/v1/rerank", json={"query": QUERY, "documents": ["x"], "max_chunks_per_doc": value})
    assert r.status_code == 422 and "max_chunks_per_doc must be between 1 and 100" in r.json()["detail"]
