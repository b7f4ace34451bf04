"""The dialect contract as clients meet it: any client's model name on a one-model server, 404 and
405 in the dialect's shape, an OpenAPI document that lists the statuses routes really answer,
text with lone UTF-16 surrogates, and the Cohere SDK itself pointed at the server."""

from __future__ import annotations

import json
from typing import Any

import pytest

from reranker_serve.api import cohere, jina, native
from reranker_serve.api.cohere import CohereErrorResponse, CohereV1RerankResponse, CohereV2RerankResponse
from reranker_serve.api.jina import JinaErrorResponse, JinaRerankResponse
from reranker_serve.api.native import NativeRerankResponse, TEIErrorResponse
from conftest import DOCS, QUERY

# What unmodified clients send: each vendor's own model names.
CLIENT_REQUESTS = {
    "cohere-v1": ("/v1/rerank", {"model": "rerank-english-v3.0", "query": QUERY, "documents": DOCS}),
    "cohere-v2": ("/v2/rerank", {"model": "rerank-v3.5", "query": QUERY, "documents": DOCS}),
    "jina": ("/api/v1/rerank", {"model": "jina-reranker-v2-base-multilingual", "query": QUERY, "documents": DOCS}),
    "native": ("/rerank", {"model": "bge-reranker-v2-m3", "query": QUERY, "documents": DOCS}),
    "tei": ("/rerank", {"model": "BAAI/bge-reranker-large", "query": QUERY, "texts": DOCS}),
}


def _scores(reply: Any) -> dict[int, float]:
    results = reply if isinstance(reply, list) else reply["results"]
    return {r["index"]: r.get("relevance_score", r.get("score")) for r in results}


@pytest.fixture(scope="module")
def single(serve):
    """A server as the README starts it: one model, default settings (RERANKER_UNKNOWN_MODEL=auto)."""
    return serve()


@pytest.mark.parametrize("dialect", CLIENT_REQUESTS)
def test_one_served_model_answers_whatever_name_a_client_sends(single, reference, dialect):
    path, body = CLIENT_REQUESTS[dialect]
    r = single.client.post(path, json=body)
    assert r.status_code == 200, r.text
    expected = reference.scores(QUERY, DOCS)
    got = _scores(r.json())
    assert sorted(got) == list(range(len(DOCS)))
    for index, score in got.items():
        assert score == pytest.approx(expected[index], abs=1e-5)
    if dialect in ("native", "jina"):  # replies that name a model name the one that answered
        assert r.json()["model"] == "tiny-reranker"


def test_unknown_model_error_policy_still_refuses_on_one_model(serve):
    srv = serve(unknown_model="error")
    r = srv.client.post("/v2/rerank", json=CLIENT_REQUESTS["cohere-v2"][1])
    assert r.status_code == 404
    message = CohereErrorResponse.model_validate(r.json()).message
    assert "'rerank-v3.5' is not served" in message and "'tiny-reranker'" in message


# -- 404 and 405 in the dialect's shape -----------------------------------------------------------
@pytest.mark.parametrize("method,path,status,shape,field", [
    ("GET", "/v1/rerank", 405, CohereErrorResponse, "message"),
    ("GET", "/v2/rerank", 405, CohereErrorResponse, "message"),
    ("PUT", "/rerank", 405, TEIErrorResponse, "error"),
    ("GET", "/api/v1/rerank", 405, JinaErrorResponse, "detail"),
    ("POST", "/v2/rerankk", 404, CohereErrorResponse, "message"),
    ("POST", "/api/v2/rerank", 404, JinaErrorResponse, "detail"),
])
def test_wrong_method_or_path_answers_in_the_dialect_shape(single, method, path, status, shape, field):
    r = single.client.request(method, path)
    assert r.status_code == status
    message = getattr(shape.model_validate(r.json()), field)
    assert path in message
    if status == 405:
        assert "POST" in message and r.headers["allow"] == "POST"
    assert set(r.json()) == set(shape.model_fields)  # nothing of FastAPI's own shape left


def test_system_routes_keep_fastapis_shape_for_unknown_paths(single):
    r = single.client.get("/nowhere")
    assert r.status_code == 404 and r.json() == {"detail": "Not Found"}


# -- the documented statuses are the real ones ----------------------------------------------------
@pytest.mark.parametrize("dialect,path", [
    (native.dialect, "/rerank"), (cohere.dialect, "/v1/rerank"), (cohere.dialect, "/v2/rerank"),
    (jina.dialect, "/api/v1/rerank"),
])
def test_openapi_lists_the_error_statuses_each_route_answers(single, dialect, path):
    documented = single.client.get("/openapi.json").json()["paths"][path]["post"]["responses"]
    errors = sorted(int(s) for s in documented if int(s) >= 400)
    assert errors == dialect.statuses()
    schema_ref = documented[str(errors[0])]["content"]["application/json"]["schema"]["$ref"]
    assert schema_ref.endswith(dialect.error_model.__name__)


def test_cohere_documents_400_not_422_and_answers_it(single):
    documented = single.client.get("/openapi.json").json()["paths"]["/v2/rerank"]["post"]["responses"]
    assert "400" in documented and "422" not in documented and "413" not in documented
    r = single.client.post("/v2/rerank", json={"query": QUERY, "documents": "not a list"})
    assert r.status_code == 400 and r.json()["message"].startswith("invalid request: documents")


# -- lone surrogates ------------------------------------------------------------------------------
SURROGATE_BODIES = {
    "native": ("/rerank", {"query": QUERY + "\ud83d", "documents": ["Paris\ud800 is here", *DOCS[1:]],
                           "return_documents": True}),
    "tei": ("/rerank", {"query": QUERY + "\ud83d", "texts": ["Paris\ud800 is here", *DOCS[1:]], "return_text": True}),
    "cohere-v1": ("/v1/rerank", {"query": QUERY + "\ud83d", "return_documents": True,
                                 "documents": [{"text": "Paris\ud800 is here", "id": "x\udfff"}, *DOCS[1:]]}),
    "cohere-v2": ("/v2/rerank", {"query": QUERY + "\ud83d", "documents": ["Paris\ud800 is here", *DOCS[1:]]}),
    "jina": ("/api/v1/rerank", {"query": {"text": QUERY + "\ud83d"},
                                "documents": [{"text": "Paris\ud800 is here"}, *DOCS[1:]]}),
}


@pytest.mark.parametrize("dialect", SURROGATE_BODIES)
def test_lone_surrogates_are_replaced_not_a_500(single, reference, dialect):
    path, body = SURROGATE_BODIES[dialect]
    # json.dumps escapes them as \\ud800, as a JavaScript or Java client would send them.
    raw = json.dumps(body)
    assert "\\ud800" in raw
    r = single.client.post(path, content=raw, headers={"Content-Type": "application/json"})
    assert r.status_code == 200, r.text
    docs = ["Paris\ufffd is here", *DOCS[1:]]
    expected = reference.scores(QUERY + "\ufffd", docs)
    for index, score in _scores(r.json()).items():
        assert score == pytest.approx(expected[index], abs=1e-5)
    results = r.json() if isinstance(r.json(), list) else r.json()["results"]
    returned = {x["index"]: x.get("document") or x.get("text") for x in results}
    if returned[0] is not None:
        text = returned[0] if isinstance(returned[0], str) else returned[0]["text"]
        assert text == "Paris\ufffd is here"
    if dialect == "cohere-v1":
        assert returned[0]["id"] == "x\ufffd"


# -- the Cohere SDK, unmodified --------------------------------------------------------------------
def test_cohere_sdk_v2_client_works_with_its_usual_model_name(single, reference):
    cohere_sdk = pytest.importorskip("cohere")
    client = cohere_sdk.ClientV2(api_key="unused", base_url=single.url)
    reply = client.rerank(model="rerank-v3.5", query=QUERY, documents=DOCS, top_n=3)
    expected = reference.scores(QUERY, DOCS)
    best = sorted(range(len(DOCS)), key=lambda i: -expected[i])[:3]
    assert [r.index for r in reply.results] == best
    for r in reply.results:
        assert r.relevance_score == pytest.approx(expected[r.index], abs=1e-5)
    CohereV2RerankResponse.model_validate(reply.model_dump(exclude_none=True))


def test_cohere_sdk_v1_client_works_with_its_usual_model_name(single, reference):
    cohere_sdk = pytest.importorskip("cohere")
    client = cohere_sdk.Client(api_key="unused", base_url=single.url)
    reply = client.rerank(model="rerank-english-v3.0", query=QUERY, documents=DOCS, top_n=2, return_documents=True)
    expected = reference.scores(QUERY, DOCS)
    assert [r.index for r in reply.results] == sorted(range(len(DOCS)), key=lambda i: -expected[i])[:2]
    for r in reply.results:
        assert r.relevance_score == pytest.approx(expected[r.index], abs=1e-5)
        assert r.document.text == DOCS[r.index]
    assert reply.meta.api_version.version == "1"


def test_reply_models_validate_every_dialects_reply(single):
    for dialect, model in (("native", NativeRerankResponse), ("cohere-v1", CohereV1RerankResponse),
                           ("cohere-v2", CohereV2RerankResponse), ("jina", JinaRerankResponse)):
        path, body = CLIENT_REQUESTS[dialect]
        model.model_validate(single.client.post(path, json=body).json())
