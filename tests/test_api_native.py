"""POST /rerank: the native shape and the TEI shape on the same path."""

from __future__ import annotations

import pytest
from pydantic import TypeAdapter

from reranker_serve.api.native import NativeRerankResponse, TEIErrorResponse, TEIRank
from conftest import DOCS, QUERY

TEIReply = TypeAdapter(list[TEIRank])


def test_native_scores_and_order_match_reference(client, reference):
    r = client.post("/rerank", json={"query": QUERY, "documents": DOCS})
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"model", "results", "usage"}
    reply = NativeRerankResponse.model_validate(body)
    assert reply.model == "tiny-reranker"
    expected = reference.scores(QUERY, DOCS)
    assert [x.index for x in reply.results] == reference.ranking(QUERY, DOCS)
    for result in reply.results:
        assert result.relevance_score == pytest.approx(expected[result.index], abs=1e-5)
        assert "document" not in body["results"][0]  # return_documents defaults to false
    assert reply.usage.total_tokens == sum(
        len(reference.tokenizer(QUERY, d)["input_ids"]) for d in DOCS
    )


def test_native_return_documents_and_raw_scores(client, reference):
    r = client.post("/rerank", json={"query": QUERY, "documents": DOCS, "return_documents": True, "raw_scores": True})
    reply = NativeRerankResponse.model_validate(r.json())
    logits = reference.logits(QUERY, DOCS)
    for result in reply.results:
        assert result.document.text == DOCS[result.index]
        assert result.relevance_score == pytest.approx(logits[result.index], abs=1e-5)


@pytest.mark.parametrize("top_n,expected", [(None, 5), (0, 5), (2, 2), (5, 5), (50, 5)])
def test_native_top_n(client, reference, top_n, expected):
    r = client.post("/rerank", json={"query": QUERY, "documents": DOCS, "top_n": top_n})
    assert r.status_code == 200
    indices = [x["index"] for x in r.json()["results"]]
    assert indices == reference.ranking(QUERY, DOCS)[:expected]


def test_equal_documents_keep_request_order(client):
    r = client.post("/rerank", json={"query": QUERY, "documents": ["same text"] * 4 + ["Paris is the capital of France."]})
    indices = [x["index"] for x in r.json()["results"]]
    same = [i for i in indices if i < 4]
    assert same == [0, 1, 2, 3]


def test_extra_fields_are_ignored_and_an_alias_answers_with_the_model_name(client):
    r = client.post("/rerank", json={"query": QUERY, "documents": DOCS, "model": "rerank-v3.5", "foo": {"bar": 1}})
    assert r.status_code == 200
    assert r.json()["model"] == "tiny-reranker"


def test_timing_headers(client):
    r = client.post("/rerank", json={"query": QUERY, "documents": DOCS})
    for header in ("x-total-time", "x-queue-time", "x-inference-time", "x-compute-tokens"):
        assert float(r.headers[header]) >= 0
    assert int(r.headers["x-compute-tokens"]) == r.json()["usage"]["total_tokens"]


def test_tei_shape(client, reference):
    r = client.post("/rerank", json={"query": QUERY, "texts": DOCS, "return_text": True})
    assert r.status_code == 200, r.text
    ranks = TEIReply.validate_python(r.json())
    assert isinstance(r.json(), list) and set(r.json()[0]) == {"index", "text", "score"}
    expected = reference.scores(QUERY, DOCS)
    assert [x.index for x in ranks] == reference.ranking(QUERY, DOCS)
    for rank in ranks:
        assert rank.text == DOCS[rank.index]
        assert rank.score == pytest.approx(expected[rank.index], abs=1e-5)


def test_tei_defaults_and_raw_scores(client, reference):
    r = client.post("/rerank", json={"query": QUERY, "texts": DOCS, "raw_scores": True})
    body = r.json()
    assert set(body[0]) == {"index", "score"}  # no text unless return_text
    logits = reference.logits(QUERY, DOCS)
    for rank in body:
        assert rank["score"] == pytest.approx(logits[rank["index"]], abs=1e-5)


def test_tei_truncation(client, reference):
    long_doc = " ".join(["Paris is the capital of France."] * 60)
    # truncate=false: over-long input is an error, as in TEI.
    r = client.post("/rerank", json={"query": QUERY, "texts": [long_doc], "truncate": False})
    assert r.status_code == 413
    err = TEIErrorResponse.model_validate(r.json())
    assert err.error_type == "Validation" and "must have less than 128 tokens" in err.error
    # Default (and truncate=true): the document is cut to fit beside the whole query.
    ok = client.post("/rerank", json={"query": QUERY, "texts": [long_doc], "raw_scores": True})
    assert ok.status_code == 200
    assert ok.json()[0]["score"] == pytest.approx(reference.logits(QUERY, [long_doc])[0], abs=1e-5)
    assert int(ok.headers["x-compute-tokens"]) == 128
    # Left truncation keeps the end of the document, right truncation its start.
    doc = "Berlin is big. " * 40 + "Paris is the capital of France."
    scores = {}
    for side in ("Left", "right"):
        r = client.post("/rerank", json={"query": QUERY, "texts": [doc], "raw_scores": True, "truncation_direction": side})
        assert r.status_code == 200, r.text
        scores[side.lower()] = r.json()[0]["score"]
        assert scores[side.lower()] == pytest.approx(reference.logits(QUERY, [doc], side=side.lower())[0], abs=1e-5)
    assert abs(scores["left"] - scores["right"]) > 1e-3


@pytest.mark.parametrize(
    "body,status,needle",
    [
        ({"query": "", "documents": DOCS}, 422, "query must not be empty"),
        ({"query": "   ", "documents": DOCS}, 422, "query must not be empty"),
        ({"query": QUERY, "documents": []}, 422, "documents must not be empty"),
        ({"query": QUERY, "texts": []}, 422, "documents must not be empty"),
        ({"query": QUERY, "documents": DOCS, "top_n": -1}, 422, "top_n must be 0 or more"),
        ({"query": QUERY, "documents": [1, 2]}, 422, "documents[0]: Input should be a valid string"),
        ({"query": QUERY, "documents": "one doc"}, 422, "documents: Input should be a valid list"),
        ({"documents": DOCS}, 422, "query: field required"),
        ({"query": QUERY}, 422, "documents: field required"),
        ([QUERY], 422, "must be a JSON object"),
        ({"query": QUERY, "documents": ["x"] * 1001}, 413, "too many documents: 1001 sent, at most 1000"),
    ],
)
def test_native_errors(client, body, status, needle):
    r = client.post("/rerank", json=body)
    assert r.status_code == status, r.text
    err = TEIErrorResponse.model_validate(r.json())
    assert set(r.json()) == {"error", "error_type"}
    assert needle in err.error
    assert err.error_type == "Validation"


def test_malformed_json(client):
    r = client.post("/rerank", content=b'{"query": "x", "documents": [', headers={"content-type": "application/json"})
    assert r.status_code == 422
    assert r.json()["error"].startswith("the request body is not valid JSON")
