"""POST /api/v1/rerank: Jina AI's shape."""

from __future__ import annotations

import pytest

from reranker_serve.api.jina import JinaErrorResponse, JinaRerankResponse
from conftest import DOCS, QUERY


def test_jina_defaults_return_documents(client, reference):
    r = client.post("/api/v1/rerank", json={"model": "jina-reranker-v2-base-multilingual", "query": QUERY,
                                            "documents": DOCS, "top_n": 2})
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"model", "usage", "results"}
    reply = JinaRerankResponse.model_validate(body)
    assert reply.model == "tiny-reranker"
    assert [x.index for x in reply.results] == reference.ranking(QUERY, DOCS)[:2]
    expected = reference.scores(QUERY, DOCS)
    for x in reply.results:
        assert x.document.text == DOCS[x.index]
        assert x.relevance_score == pytest.approx(expected[x.index], abs=1e-5)
    assert reply.usage.total_tokens > 0


def test_jina_objects_and_no_documents(client, reference):
    docs = [{"text": d} for d in DOCS]
    r = client.post("/api/v1/rerank", json={"query": {"text": QUERY}, "documents": docs, "return_documents": False})
    body = r.json()
    assert [x["index"] for x in body["results"]] == reference.ranking(QUERY, DOCS)
    assert all(set(x) == {"index", "relevance_score"} for x in body["results"])


@pytest.mark.parametrize(
    "body,status,needle",
    [
        ({"query": "", "documents": DOCS}, 422, "query must not be empty"),
        ({"query": QUERY, "documents": []}, 422, "documents must not be empty"),
        ({"query": QUERY, "documents": [{"image": "http://x/y.png"}]}, 422, "documents[0]"),
        ({"query": QUERY, "documents": ["x"] * 1001}, 413, "too many documents"),
        ({"query": QUERY, "documents": DOCS, "return_documents": "maybe"}, 422, "return_documents"),
    ],
)
def test_jina_errors(client, body, status, needle):
    r = client.post("/api/v1/rerank", json=body)
    assert r.status_code == status, r.text
    assert set(r.json()) == {"detail"}
    assert needle in JinaErrorResponse.model_validate(r.json()).detail
