"""Every client in the field, unchanged, pointed at a real server by its base URL (issue 18).

Clients that pip-install beside our requirements are driven themselves (requirements-dev.txt):
the voyageai, mixedbread and langchain-nvidia-ai-endpoints SDKs, and LiteLLM's nvidia_nim/,
voyage/, infinity/, hosted_vllm/, huggingface/ and together_ai/ providers. For the apps (RAGFlow,
Dify) and clients that cannot be installed here (infinity_client pins httpx<0.28), the exact
request their source builds is replayed — the source file and version are named at each — and
the fields they read are checked. Scores are checked against the reference (transformers,
fp32), and so are top_k / top_n and the order. docs/clients.md is the matrix of all of them.
"""

from __future__ import annotations

import math
import os
import re
from typing import Any

import pytest

from conftest import DOCS, QUERY
from test_chunking import FILLER, Windows

# LiteLLM fetches its model price list from GitHub at import unless told to use its bundled copy.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
litellm = pytest.importorskip("litellm")
# LiteLLM's own typed dicts warn about pydantic and ReadOnly on first use: noise, not ours.
pytestmark = pytest.mark.filterwarnings("ignore:.*ReadOnly.*:UserWarning")


@pytest.fixture(scope="module")
def single(serve):
    """A server as the README starts it: one model, so any vendor's model name selects it."""
    return serve()


def _best(reference, n: int | None = None) -> list[int]:
    return reference.ranking(QUERY, DOCS)[:n]


def _scores_match(got: dict[int, float], expected: list[float]) -> None:
    for index, score in got.items():
        assert score == pytest.approx(expected[index], abs=1e-5), index


# -- 1. NVIDIA NIM ----------------------------------------------------------------------------------
def test_langchain_nvidia_rerank(single, reference):
    nvidia = pytest.importorskip("langchain_nvidia_ai_endpoints")
    from langchain_core.documents import Document

    ranker = nvidia.NVIDIARerank(base_url=f"{single.url}/v1", model="nvidia/llama-3.2-nv-rerankqa-1b-v2",
                                 api_key="unused", top_n=3, truncate="END")
    ranked = ranker.compress_documents(documents=[Document(page_content=d) for d in DOCS], query=QUERY)
    assert [DOCS.index(d.page_content) for d in ranked] == _best(reference, 3)
    _scores_match({DOCS.index(d.page_content): d.metadata["relevance_score"] for d in ranked},
                  reference.logits(QUERY, DOCS))  # NIM's logit is the raw score


@pytest.mark.parametrize("model,api_base", [
    # nvidia_nim/ranking/… posts to {api_base}/v1/ranking (ranking_transformation.py) and cuts top_n itself.
    ("nvidia_nim/ranking/nvidia/llama-3.2-nv-rerankqa-1b-v2", "{url}/v1"),
    # nvidia_nim/… posts to {api_base}/v1/retrieval/{model}/reranking with top_k (transformation.py).
    ("nvidia_nim/nvidia/llama-3_2-nv-rerankqa-1b-v2", "{url}"),
])
def test_litellm_nvidia_nim(single, reference, model, api_base):
    reply = litellm.rerank(model=model, api_base=api_base.format(url=single.url), api_key="unused", query=QUERY,
                           documents=DOCS, top_n=2)
    assert [r["index"] for r in reply.results] == _best(reference, 2)
    _scores_match({r["index"]: r["relevance_score"] for r in reply.results}, reference.logits(QUERY, DOCS))


def test_nim_top_k_is_honoured_on_the_retrieval_path(single, reference):
    # LiteLLM's nvidia_nim/ body (litellm 1.110 llms/nvidia_nim/rerank/transformation.py).
    r = single.client.post("/v1/retrieval/nvidia/llama-3_2-nv-rerankqa-1b-v2/reranking", json={
        "model": "nvidia/llama-3.2-nv-rerankqa-1b-v2", "query": {"text": QUERY},
        "passages": [{"text": d} for d in DOCS], "top_k": 2})
    assert r.status_code == 200, r.text
    assert [x["index"] for x in r.json()["rankings"]] == _best(reference, 2)


def test_ragflow_nvidia_provider_on_v1_reranking(single, reference):
    # RAGFlow rag/llm/rerank_model.py NvidiaRerank._compute_rank (2026): urljoin(base_url,
    # "reranking") with base_url "http://host:8000/v1/", this body and headers; reads rankings[].
    r = single.client.post("/v1/reranking", headers={"accept": "application/json", "Authorization": "Bearer x"}, json={
        "model": "nvidia/nv-rerankqa-mistral-4b-v3", "query": {"text": QUERY},
        "passages": [{"text": t} for t in DOCS], "truncate": "END", "top_n": len(DOCS)})
    assert r.status_code == 200, r.text
    rankings = r.json()["rankings"]
    assert [x["index"] for x in rankings] == _best(reference)
    _scores_match({x["index"]: x["logit"] for x in rankings}, reference.logits(QUERY, DOCS))


def test_nim_truncate_none_refuses_over_long_input_in_nims_shape(single):
    # truncate "NONE" is NIM's "refuse over-long input"; "END" cuts it.
    body = {"model": "m", "query": {"text": QUERY}, "passages": [{"text": FILLER}]}
    refused = single.client.post("/v1/ranking", json={**body, "truncate": "NONE"})
    assert refused.status_code == 413, refused.text
    assert set(refused.json()) == {"type", "title", "status", "detail"} and refused.json()["status"] == 413
    assert single.client.post("/v1/ranking", json={**body, "truncate": "END"}).status_code == 200
    bad = single.client.post("/v1/ranking", json={"query": {"text": QUERY}, "passages": ["not an object"]})
    assert bad.status_code == 422 and "passages[0]" in bad.json()["detail"]


# -- 2. Voyage beside Cohere v1 on /v1/rerank --------------------------------------------------------
def test_voyageai_sdk(single, reference):
    voyageai = pytest.importorskip("voyageai")
    client = voyageai.Client(api_key="unused", base_url=f"{single.url}/v1")
    reply = client.rerank(query=QUERY, documents=DOCS, model="rerank-2.5", top_k=2)
    assert [r.index for r in reply.results] == _best(reference, 2)
    _scores_match({r.index: r.relevance_score for r in reply.results}, reference.scores(QUERY, DOCS))
    assert reply.results[0].document == DOCS[reply.results[0].index]
    assert reply.total_tokens > 0


def test_litellm_voyage(single, reference):
    reply = litellm.rerank(model="voyage/rerank-2.5", api_base=f"{single.url}/v1", api_key="unused", query=QUERY,
                           documents=DOCS, top_n=3, return_documents=True)
    assert [r["index"] for r in reply.results] == _best(reference, 3)
    assert all(r["document"]["text"] == DOCS[r["index"]] for r in reply.results)
    assert reply.meta["billed_units"]["total_tokens"] > 0


@pytest.mark.parametrize("body,dialect", [
    ({"top_k": 2}, "voyage"),
    ({"truncation": True}, "voyage"),
    ({"top_k": None, "truncation": True}, "voyage"),  # what the voyageai SDK sends without top_k
    ({}, "cohere"),
    ({"top_n": 2}, "cohere"),
    ({"top_n": 2, "top_k": 2}, "cohere"),  # a Cohere-only field wins
    ({"truncation": True, "rank_fields": ["text"]}, "cohere"),
])
def test_v1_rerank_tells_voyage_from_cohere_by_the_body(single, body, dialect):
    r = single.client.post("/v1/rerank", json={"query": QUERY, "documents": DOCS, **body})
    assert r.status_code == 200, r.text
    keys = set(r.json())
    if dialect == "voyage":
        assert keys == {"object", "data", "model", "usage"} and r.json()["object"] == "list"
        assert len(r.json()["data"]) == (body.get("top_k") or len(DOCS))
    else:
        assert keys == {"id", "results", "meta", "usage", "object", "model"} and r.json()["object"] == "rerank"


def test_voyage_truncation_false_refuses_over_long_input(single):
    r = single.client.post("/v1/rerank", json={"query": QUERY, "documents": [FILLER], "truncation": False})
    assert r.status_code == 400 and "must have less than 128 tokens" in r.json()["message"]


# -- 3. Mixedbread on /v1/reranking -----------------------------------------------------------------
def test_mixedbread_sdk(single, reference):
    mixedbread = pytest.importorskip("mixedbread")
    client = mixedbread.Mixedbread(api_key="unused", base_url=single.url, max_retries=0)
    reply = client.rerank(model="mixedbread-ai/mxbai-rerank-large-v2", query=QUERY, input=DOCS, top_k=2,
                          return_input=True)
    assert [d.index for d in reply.data] == _best(reference, 2)
    _scores_match({d.index: d.score for d in reply.data}, reference.scores(QUERY, DOCS))
    assert [d.input for d in reply.data] == [DOCS[d.index] for d in reply.data]
    assert reply.top_k == 2 and reply.return_input is True and reply.usage.prompt_tokens > 0


def test_mixedbread_objects_rank_on_rank_fields(single, reference):
    mixedbread = pytest.importorskip("mixedbread")
    client = mixedbread.Mixedbread(api_key="unused", base_url=single.url, max_retries=0)
    docs = [{"body": d, "id": i} for i, d in enumerate(DOCS)]
    reply = client.rerank(query=QUERY, input=docs, rank_fields=["body"], return_input=True)
    assert [d.index for d in reply.data] == _best(reference)
    assert reply.data[0].input == docs[reply.data[0].index]


# -- 4. Infinity ------------------------------------------------------------------------------------
def _infinity_client_body(**extra: Any) -> dict[str, Any]:
    # infinity_client 0.0.78 models/rerank_input.py RerankInput.to_dict(): return_documents,
    # raw_scores and model are always sent (their defaults are not UNSET); api/default/rerank.py
    # posts it to {base_url}/rerank.
    return {"query": QUERY, "documents": DOCS, "return_documents": False, "raw_scores": False,
            "model": "default/not-specified", **extra}


@pytest.mark.parametrize("base", ["", "/infinity"])
def test_infinity_client_reads_prompt_tokens(single, reference, base):
    r = single.client.post(f"{base}/rerank", json=_infinity_client_body(top_n=3))
    assert r.status_code == 200, r.text
    body = r.json()
    # models/re_rank_result.py ReRankResult.from_dict pops results, model, usage{prompt_tokens,
    # total_tokens} (KeyError without them) and checks `object`, when present, is "rerank".
    assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] > 0
    assert isinstance(body["model"], str) and body.get("object", "rerank") == "rerank"
    assert [x["index"] for x in body["results"]] == _best(reference, 3)
    _scores_match({x["index"]: x["relevance_score"] for x in body["results"]}, reference.scores(QUERY, DOCS))


def test_litellm_infinity_gets_documents_as_strings(single, reference):
    # LiteLLM infinity/ wraps result["document"] as the text itself: it needs a string.
    reply = litellm.rerank(model="infinity/mxbai-rerank", api_base=f"{single.url}/infinity", api_key="unused",
                           query=QUERY, documents=DOCS, top_n=2)
    assert [r["index"] for r in reply.results] == _best(reference, 2)
    assert [r["document"]["text"] for r in reply.results] == [DOCS[i] for i in _best(reference, 2)]
    assert reply.meta["tokens"]["input_tokens"] > 0  # from usage.prompt_tokens


def test_litellm_hosted_vllm_gets_documents_as_objects(single, reference):
    # The same request as infinity/ (LiteLLM's RerankRequest, return_documents true), on /rerank:
    # hosted_vllm/ calls .get("text") on each document, so it needs vLLM's {text}.
    reply = litellm.rerank(model="hosted_vllm/BAAI/bge-reranker-v2-m3", api_base=single.url, api_key="unused",
                           query=QUERY, documents=DOCS, top_n=2)
    assert [r["index"] for r in reply.results] == _best(reference, 2)
    assert [r["document"]["text"] for r in reply.results] == [DOCS[i] for i in _best(reference, 2)]


# -- 5. TEI fidelity --------------------------------------------------------------------------------
def test_litellm_huggingface_top_n_is_honoured(single, reference):
    # huggingface/ sends TEI's body with Cohere's top_n passed through (and truncate: false).
    reply = litellm.rerank(model="huggingface/BAAI/bge-reranker-v2-m3", api_base=single.url, api_key="unused",
                           query=QUERY, documents=DOCS, top_n=2)
    assert [r["index"] for r in reply.results] == _best(reference, 2)
    _scores_match({r["index"]: r["relevance_score"] for r in reply.results}, reference.scores(QUERY, DOCS))


def test_dify_tei_provider_accepts_the_server(single, reference):
    # dify-official-plugins models/huggingface_tei tei_helper.py TeiHelper._get_tei_extra_parameter:
    # GET {server_url}/info; the first key of model_type must be "embedding" or "reranker", and
    # the rerank model refuses anything but "reranker"; then max_input_length, max_client_batch_size.
    info = single.client.get("/info").json()
    model_type = info.get("model_type", {})
    assert list(model_type)[0] == "reranker"
    assert info["max_input_length"] == 128 and info["max_client_batch_size"] >= 1
    assert info["model_id"] == info["model"]
    # invoke_rerank: {"query", "texts", "return_text": True} to {server_url}/rerank.
    ranked = single.client.post("/rerank", json={"query": QUERY, "texts": DOCS, "return_text": True}).json()
    assert [x["index"] for x in ranked] == _best(reference)
    assert all(x["text"] == DOCS[x["index"]] for x in ranked)


# -- 6. Leniency ------------------------------------------------------------------------------------
def test_ragflow_xinference_provider_sends_string_booleans(single, reference):
    # RAGFlow rerank_model.py XInferenceRerank._compute_rank (2026): /v1/rerank, booleans as strings.
    r = single.client.post("/v1/rerank", json={"model": "bge-reranker-v2-m3", "query": QUERY,
                                               "return_documents": "true", "return_len": "true", "documents": DOCS})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    _scores_match({x["index"]: x["relevance_score"] for x in results}, reference.scores(QUERY, DOCS))
    assert all(x["document"]["text"] == DOCS[x["index"]] for x in results)
    off = single.client.post("/v1/rerank", json={"query": QUERY, "documents": DOCS, "return_documents": "false"})
    assert all("document" not in x for x in off.json()["results"])


@pytest.mark.parametrize("path,field", [("/v1/rerank", "return_documents"), ("/rerank", "return_documents"),
                                        ("/api/v1/rerank", "return_documents"), ("/v1/reranking", "return_input")])
@pytest.mark.parametrize("value", ["maybe", "True", "yes", 1])
def test_other_boolean_nonsense_is_still_refused(single, path, field, value):
    body = {"query": QUERY, "input" if path == "/v1/reranking" else "documents": DOCS, field: value}
    r = single.client.post(path, json=body)
    assert 400 <= r.status_code < 500 and field in r.text and "true" in r.text, r.text


def test_siliconflow_chunking_is_clamped_not_refused(single, reference):
    # RAGFlow rerank_model.py SILICONFLOWRerank._compute_rank (2026), and llama-index's
    # SiliconFlow postprocessor: max_chunks_per_doc 1024, overlap_tokens 80 on /v1/rerank.
    doc = FILLER + "Paris is the capital and largest city of France."
    r = single.client.post("/v1/rerank", json={"model": "BAAI/bge-reranker-v2-m3", "query": QUERY, "documents": [doc],
                                               "top_n": 1, "return_documents": False, "max_chunks_per_doc": 1024,
                                               "overlap_tokens": 80})
    assert r.status_code == 200, r.text
    assert r.headers["X-Reranker-Adjusted"] == "max_chunks_per_doc=100 (asked 1024; the server's cap)"
    # Scored with the request's overlap (80, at most half a window), not the server's 32.
    ours, default = Windows(reference, QUERY, doc, overlap=80), Windows(reference, QUERY, doc)
    assert len(ours.parts) != len(default.parts)
    expected = 1 / (1 + math.exp(-max(ours.logits(100))))
    assert r.json()["results"][0]["relevance_score"] == pytest.approx(expected, abs=1e-5)
    within = single.client.post("/v1/rerank", json={"query": QUERY, "documents": [doc], "max_chunks_per_doc": 3})
    assert "X-Reranker-Adjusted" not in within.headers
    for bad in ({"max_chunks_per_doc": 0}, {"overlap_tokens": -1}):
        assert single.client.post("/v1/rerank", json={"query": QUERY, "documents": [doc], **bad}).status_code == 400


# -- 7. Together's typed reply ----------------------------------------------------------------------
def test_litellm_together_ai_and_the_typed_reply(single, reference):
    reply = litellm.rerank(model="together_ai/Salesforce/Llama-Rank-V1", api_base=f"{single.url}/v1",
                           api_key="unused", query=QUERY, documents=DOCS, top_n=2)
    assert [r["index"] for r in reply.results] == _best(reference, 2)
    # together SDK types/rerank.py RerankResponse: object Literal["rerank"] and model, both required.
    body = single.client.post("/v1/rerank", json={"model": "Salesforce/Llama-Rank-V1", "query": QUERY,
                                                  "documents": DOCS}).json()
    assert body["object"] == "rerank" and body["model"] == "tiny-reranker"


# -- the README shows each new dialect (test_readme.py runs the examples) ------------------------------
def test_the_readme_has_an_example_for_every_new_dialect():
    from test_readme import EXAMPLES

    commands = " ".join(e.command for e in EXAMPLES)
    for route in ("/v1/ranking", "/v1/reranking", "/infinity/rerank"):
        assert f"localhost:8000{route} " in commands, route
    assert any("localhost:8000/v1/rerank " in e.command and '"top_k"' in e.command and e.reply for e in EXAMPLES)


# -- the dialect contract for the new dialects --------------------------------------------------------
@pytest.mark.parametrize("method,path,status,fields", [
    ("GET", "/v1/ranking", 405, {"type", "title", "status", "detail"}),
    ("GET", "/v1/retrieval/nvidia/x/reranking", 405, {"type", "title", "status", "detail"}),
    ("POST", "/v1/retrieval/nvidia/x/rankin", 404, {"type", "title", "status", "detail"}),
    ("GET", "/v1/reranking", 405, {"type", "title", "status", "detail"}),
    ("GET", "/infinity/rerank", 405, {"error"}),
    ("POST", "/infinity/v1/rerank", 404, {"error"}),
])
def test_wrong_method_or_path_answers_in_the_new_dialects_shape(single, method, path, status, fields):
    r = single.client.request(method, path)
    assert r.status_code == status and set(r.json()) == fields, r.text
    assert path in r.text


def test_openapi_lists_the_error_statuses_the_new_routes_answer(single):
    from reranker_serve.api import infinity, mixedbread, nim

    paths = single.client.get("/openapi.json").json()["paths"]
    for dialect, path in ((nim.dialect, "/v1/ranking"), (nim.dialect, "/v1/retrieval/{model}/reranking"),
                          (mixedbread.dialect, "/v1/reranking"), (infinity.dialect, "/infinity/rerank")):
        documented = paths[path]["post"]["responses"]
        assert sorted(int(s) for s in documented if int(s) >= 400) == dialect.statuses(), path


def test_metrics_label_the_new_dialects(single):
    single.client.post("/v1/ranking", json={"query": {"text": QUERY}, "passages": [{"text": DOCS[0]}]})
    single.client.post("/v1/reranking", json={"query": QUERY, "input": DOCS[:1]})
    single.client.post("/v1/rerank", json={"query": QUERY, "documents": DOCS[:1], "top_k": 1})
    single.client.post("/infinity/rerank", json={"query": QUERY, "documents": DOCS[:1]})
    single.client.post("/v1/retrieval/nvidia/nv-rerankqa-mistral-4b-v3/reranking",
                       json={"query": {"text": QUERY}, "passages": [{"text": DOCS[0]}]})
    text = single.client.get("/metrics").text
    for label in ("nim", "mixedbread", "voyage", "infinity"):
        assert f'dialect="{label}"' in text, label
    # Each route by its own label (a template for a path with a parameter: bounded label values),
    # not "other", and each in the latency histogram.
    for dialect, route in (("nim", "/v1/ranking"), ("nim", "/v1/retrieval/{model}/reranking"),
                           ("mixedbread", "/v1/reranking"), ("voyage", "/v1/rerank"), ("infinity", "/infinity/rerank")):
        assert re.search(rf'reranker_requests_total\{{dialect="{dialect}",key="",route="{re.escape(route)}",'
                         r'status="200"\} [1-9]', text), (dialect, route)
        assert re.search(rf'reranker_request_duration_seconds_count\{{dialect="{dialect}"\}} [1-9]', text), dialect
