"""POST /v1/rerank and /v2/rerank: Cohere's shapes (and Jina-shaped callers of /v1)."""

from __future__ import annotations

import uuid

import pytest

from reranker_serve.api.cohere import CohereErrorResponse, CohereV1RerankResponse, CohereV2RerankResponse
from conftest import DOCS, QUERY


def test_v1_strings(client, reference):
    r = client.post("/v1/rerank", json={"model": "rerank-english-v3.0", "query": QUERY, "documents": DOCS, "top_n": 3})
    assert r.status_code == 200, r.text
    body = r.json()
    # Together's typed reply (issue 18) declares `object` and `model` required on /v1/rerank.
    assert set(body) == {"id", "results", "meta", "usage", "object", "model"}
    assert body["object"] == "rerank" and body["model"] == "tiny-reranker"  # the model that answered
    reply = CohereV1RerankResponse.model_validate(body)
    uuid.UUID(reply.id)
    assert [x.index for x in reply.results] == reference.ranking(QUERY, DOCS)[:3]
    expected = reference.scores(QUERY, DOCS)
    for x in reply.results:
        assert x.relevance_score == pytest.approx(expected[x.index], abs=1e-5)
    assert all("document" not in x for x in body["results"])  # return_documents defaults to false
    assert body["meta"] == {"api_version": {"version": "1"}, "billed_units": {"search_units": 1}}
    assert reply.usage.total_tokens > 0


def test_v1_objects_and_return_documents(client, reference):
    docs = [{"text": d, "id": f"doc-{i}", "year": 2000 + i} for i, d in enumerate(DOCS)]
    r = client.post("/v1/rerank", json={"query": QUERY, "documents": docs, "return_documents": True})
    reply = CohereV1RerankResponse.model_validate(r.json())
    assert [x.index for x in reply.results] == reference.ranking(QUERY, DOCS)
    for x in reply.results:
        assert x.document == docs[x.index]  # the client's own object, every key kept
    strings = client.post("/v1/rerank", json={"query": QUERY, "documents": DOCS[:2], "return_documents": True})
    assert strings.json()["results"][0]["document"] == {"text": DOCS[strings.json()["results"][0]["index"]]}


def test_v1_rank_fields(client, reference):
    docs = [{"title": f"t{i}", "body": d} for i, d in enumerate(DOCS)]
    one = client.post("/v1/rerank", json={"query": QUERY, "documents": docs, "rank_fields": ["body"]})
    assert [x["index"] for x in one.json()["results"]] == reference.ranking(QUERY, DOCS)
    two = client.post("/v1/rerank", json={"query": QUERY, "documents": docs, "rank_fields": ["title", "body"]})
    combined = [f"title: t{i}\nbody: {d}" for i, d in enumerate(DOCS)]
    expected = reference.scores(QUERY, combined)
    for x in two.json()["results"]:
        assert x["relevance_score"] == pytest.approx(expected[x["index"]], abs=1e-5)


def test_v1_max_chunks_per_doc_accepted(client):
    r = client.post("/v1/rerank", json={"query": QUERY, "documents": DOCS, "max_chunks_per_doc": 10})
    assert r.status_code == 200


def test_v2(client, reference):
    r = client.post("/v2/rerank", json={"model": "rerank-v3.5", "query": QUERY, "documents": DOCS})
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"id", "results", "meta"}
    reply = CohereV2RerankResponse.model_validate(body)
    assert [x.index for x in reply.results] == reference.ranking(QUERY, DOCS)
    assert all(set(x) == {"index", "relevance_score"} for x in body["results"])
    assert body["meta"]["api_version"] == {"version": "2", "is_experimental": False}
    assert body["meta"]["billed_units"] == {"search_units": 1}


def test_v2_max_tokens_per_doc_truncates(client, reference):
    doc = "Paris is the capital of France. " + "The cat sat on the mat. " * 10
    ids = reference.tokenizer(doc, add_special_tokens=False)["input_ids"][:6]
    cut = reference.tokenizer.decode(ids)
    full = client.post("/v2/rerank", json={"query": QUERY, "documents": [doc]}).json()
    short = client.post("/v2/rerank", json={"query": QUERY, "documents": [doc], "max_tokens_per_doc": 6}).json()
    assert short["results"][0]["relevance_score"] == pytest.approx(reference.scores(QUERY, [cut])[0], abs=1e-5)
    assert full["results"][0]["relevance_score"] == pytest.approx(reference.scores(QUERY, [doc])[0], abs=1e-5)
    assert abs(short["results"][0]["relevance_score"] - full["results"][0]["relevance_score"]) > 1e-4


def test_search_units_count_hundreds(client):
    r = client.post("/v2/rerank", json={"query": QUERY, "documents": ["doc"] * 201})
    assert r.json()["meta"]["billed_units"]["search_units"] == 3


@pytest.mark.parametrize("path", ["/v1/rerank", "/v2/rerank"])
@pytest.mark.parametrize(
    "body,needle",
    [
        ({"query": "", "documents": DOCS}, "invalid request: query must not be empty"),
        ({"query": QUERY, "documents": []}, "invalid request: documents must not be empty"),
        ({"query": QUERY, "documents": DOCS, "top_n": -3}, "invalid request: top_n must be 0 or more"),
        ({"query": QUERY, "documents": [{"title": "no text"}]}, "documents[0] has no field 'text'"),
        ({"query": QUERY, "documents": [{"a": "x"}], "rank_fields": ["a", "b"]}, "documents[0] has no field 'b'"),
        ({"query": 5, "documents": DOCS}, "query: Input should be a valid string"),
        ({"query": QUERY, "documents": ["x"] * 1001}, "too many documents"),
        ({"query": QUERY, "documents": DOCS, "top_n": "three"}, "top_n: Input should be a valid integer"),
    ],
)
def test_errors_are_cohere_shaped(client, path, body, needle):
    r = client.post(path, json=body)
    assert r.status_code == 400, r.text
    assert set(r.json()) == {"message"}
    assert needle in CohereErrorResponse.model_validate(r.json()).message


def test_malformed_json(client):
    r = client.post("/v1/rerank", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400
    assert r.json()["message"].startswith("invalid request: the request body is not valid JSON")
