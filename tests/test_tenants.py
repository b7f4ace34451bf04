"""Issue 21, a shared service under hostile tenants: work (model tokens, windows) is what limits
count; a huge request cannot hold the engine; the score cache is partitioned by key and usage
counts cached pairs; X-Priority never raises a key's priority."""

from __future__ import annotations

import json
import random
import re
import string
import threading
import time

import httpx
import pytest

from reranker_serve.bootstrap import start_up_settings
from reranker_serve.config import ConfigError, load_settings
from conftest import DOCS, QUERY, RunningServer, settings_for
from test_cache import metric, pair_tokens

def _word(rng: random.Random) -> str:
    return "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(2, 7)))


def words(n: int, start: int = 0) -> str:
    """``n`` random words: about 2 characters a token, as the issue's texts (725k tokens)."""
    rng = random.Random(start)
    return " ".join(_word(rng) for _ in range(n))


def kilobytes(n: int, start: int = 0) -> str:
    rng, out, size = random.Random(1000 + start), [], 0
    while size < n * 1024:
        out.append(_word(rng))
        size += len(out[-1]) + 1
    return " ".join(out)[: n * 1024]


# The attack of the issue: a 600-word query, 40 documents of 16 KB, each split into 100 windows.
ATTACK = {"query": words(600), "documents": [kilobytes(16, start=97 * i) for i in range(40)], "max_chunks_per_doc": 100}
SMALL = {"query": QUERY, "documents": DOCS[:3]}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


# -- 1. work is what is counted ------------------------------------------------------------------
def test_the_725k_token_request_is_refused_by_the_token_cap_naming_it(serve):
    r = serve().client.post("/rerank", json=ATTACK)
    assert r.status_code == 413, r.text[:300]
    message = r.json()["error"]
    # The default cap: RERANKER_MAX_DOCUMENTS (1000) x the window (128 tokens).
    assert "more than the 128000 one request may cost (RERANKER_MAX_REQUEST_TOKENS" in message, message
    cost = int(re.search(r"this request costs (\d+) model tokens", message).group(1))
    assert cost > 128000
    # Cohere's shape and status for the same request.
    r = serve().client.post("/v1/rerank", json=ATTACK)
    assert r.status_code == 400 and "RERANKER_MAX_REQUEST_TOKENS" in r.json()["message"]


def test_the_cap_counts_every_window_and_is_a_setting(serve, reference):
    # Two documents: one window each unchunked, several each when chunked.
    long_docs = [kilobytes(2), kilobytes(2, start=5)]
    srv = serve(max_request_tokens=400)
    one = srv.client.post("/rerank", json={"query": QUERY, "documents": long_docs})
    assert one.status_code == 200 and one.json()["usage"]["total_tokens"] <= 256
    chunked = srv.client.post("/rerank", json={"query": QUERY, "documents": long_docs, "max_chunks_per_doc": 10})
    assert chunked.status_code == 413
    assert "more than the 400 one request may cost (RERANKER_MAX_REQUEST_TOKENS)" in chunked.json()["error"]
    with pytest.raises(ConfigError, match="RERANKER_MAX_REQUEST_TOKENS"):
        load_settings(_env_file=None, max_request_tokens=-1)


def test_a_small_request_is_not_held_behind_the_725k_token_one(serve):
    """The attack with the cap raised: its windows are split into batches and a 3-document
    request sent while it computes is answered long before it (it used to wait ~1 minute)."""
    srv = serve(max_request_tokens=10_000_000, request_timeout=600)
    finished: list[str] = []
    answers: dict[str, httpx.Response] = {}

    def attack() -> None:
        answers["attack"] = httpx.post(f"{srv.url}/rerank", json=ATTACK, timeout=600)
        finished.append("attack")

    worker = threading.Thread(target=attack)
    worker.start()
    deadline = time.monotonic() + 120
    while metric(srv, "reranker_queue_depth", model="tiny-reranker") < 1000:  # its windows are queued
        assert worker.is_alive() and time.monotonic() < deadline, answers.get("attack")
        time.sleep(0.01)
    small = srv.client.post("/rerank", json=SMALL)
    finished.append("small")
    assert small.status_code == 200 and len(small.json()["results"]) == 3
    assert metric(srv, "reranker_queue_depth", model="tiny-reranker") > 0  # the attack still computes
    worker.join(600)
    assert finished == ["small", "attack"]
    assert answers["attack"].status_code == 200 and answers["attack"].json()["usage"]["total_tokens"] > 128000


KEYS = {
    "tenant": {"key": "sk-tenant-0123456789", "pairs_per_minute": 2},
    "metered": {"key": "sk-metered-0123456789", "tokens_per_minute": 60, "tokens_burst": 100},
}


@pytest.fixture(scope="module")
def keyed(serve):
    return serve(api_keys=json.dumps(KEYS))


def test_a_key_charged_two_pairs_cannot_compute_two_hundred_windows(keyed):
    """The issue: a tenant charged 2 pairs computed 36,547 tokens (2 documents chunked 100 ways)."""
    body = {"query": words(30), "documents": [kilobytes(16), kilobytes(16, start=11)], "max_chunks_per_doc": 100}
    r = keyed.client.post("/rerank", json=body, headers=bearer("sk-tenant-0123456789"))
    assert r.status_code == 413, r.text
    message = r.json()["error"]
    pairs = int(re.match(r"(\d+) \(query, document\) pairs", message).group(1))
    assert pairs > 100 and "exceed the 2 that key 'tenant' may send at once (pairs_burst)" in message
    # Unchunked, the two documents are two pairs: they pass, and the bucket is empty after them.
    ok = keyed.client.post("/rerank", json={**body, "max_chunks_per_doc": 1}, headers=bearer("sk-tenant-0123456789"))
    assert ok.status_code == 200
    again = keyed.client.post("/rerank", json=SMALL | {"documents": DOCS[:1]}, headers=bearer("sk-tenant-0123456789"))
    assert again.status_code == 429 and "2 pairs per minute (pairs_per_minute, chunks included)" in again.json()["error"]


def test_a_token_limit_counts_the_tokens_the_model_computes(keyed, serve):
    docs = ["Paris is the capital of France.", "Berlin is the capital of Germany."]
    cost = serve().client.post("/rerank", json={"query": QUERY, "documents": docs}).json()["usage"]["total_tokens"]
    assert 30 < cost <= 50  # the burst (100) holds two such requests, not three
    headers = bearer("sk-metered-0123456789")
    replies = [keyed.client.post("/rerank", json={"query": QUERY, "documents": docs}, headers=headers) for _ in range(3)]
    assert [r.status_code for r in replies[:2]] == [200, 200] and replies[0].json()["usage"]["total_tokens"] == cost
    refused = replies[2]
    assert refused.status_code == 429
    assert "key 'metered' is over its limit of 60 tokens per minute (tokens_per_minute)" in refused.json()["error"]
    # 1 token a second: the missing tokens take that many seconds.
    assert int(refused.headers["retry-after"]) == pytest.approx(cost - (100 - 2 * cost), abs=2)
    # More than the burst at once could never pass: 413, not 429.
    big = keyed.client.post("/rerank", json={"query": QUERY, "documents": docs * 3}, headers=headers)
    assert big.status_code == 413 and "more than the 100 that key 'metered' may spend at once" in big.json()["error"]


# -- 2. the score cache is partitioned, usage counts cached pairs ----------------------------------
TENANTS = {
    "a": "sk-tenant-a-0123456789",
    "b": "sk-tenant-b-0123456789",
    "c": {"key": "sk-tenant-c-0123456789", "cache_group": "team"},
    "d": {"key": "sk-tenant-d-0123456789", "cache_group": "team"},
}


ASKED = "Which tenant asked about this?"


def scored(srv: RunningServer, key: str | None, docs: list[str], path: str = "/rerank") -> dict:
    body = {"query": ASKED, "documents": docs}
    r = srv.client.post(path, json=body, headers=bearer(key) if key else {})
    assert r.status_code == 200, r.text
    reply = r.json()
    usage = reply["usage"]
    if "prompt_tokens" in usage:  # Infinity's field on /rerank: all of them, cached or not
        assert usage.pop("prompt_tokens") == usage["total_tokens"]
    return {"scores": {x["index"]: x["relevance_score"] for x in reply["results"]}, "usage": usage,
            "compute": int(r.headers["x-compute-tokens"]), "inference": r.headers["x-inference-time"]}


def test_one_tenant_cannot_see_what_another_scored(serve, reference):
    srv = serve(api_keys=json.dumps(TENANTS), cache_mb=4)
    docs = ["Tenant A's confidential merger memo about Paris."]
    a = scored(srv, "sk-tenant-a-0123456789", docs)
    tokens = a["compute"]
    # B sends the same pair: computed for B (its own partition), nothing says A asked it.
    b = scored(srv, "sk-tenant-b-0123456789", docs)
    assert b["compute"] == tokens > 0 and b["inference"] != "0.00"
    assert a["usage"] == {"total_tokens": tokens, "prompt_tokens_details": {"cached_tokens": 0}}
    assert b["usage"] == {"total_tokens": tokens, "prompt_tokens_details": {"cached_tokens": 0}}
    assert b["scores"] == a["scores"]  # the same float, computed again
    # A's own repeat is a hit: it costs the same usage, reported as cached.
    again = scored(srv, "sk-tenant-a-0123456789", docs, "/api/v1/rerank")
    assert again["compute"] == 0 and again["scores"] == a["scores"]
    assert again["usage"] == {"total_tokens": tokens, "prompt_tokens_details": {"cached_tokens": tokens}}
    # Keys of one cache_group share (an explicit opt-in).
    c = scored(srv, "sk-tenant-c-0123456789", docs)
    d = scored(srv, "sk-tenant-d-0123456789", docs, "/v1/rerank")
    assert c["compute"] == tokens and d["compute"] == 0
    assert d["usage"] == {"total_tokens": tokens, "prompt_tokens_details": {"cached_tokens": tokens}}


def test_usage_counts_cached_pairs_whatever_the_dialect(serve, reference):
    srv = serve(cache_mb=4)
    docs = ["A pair cached for usage.", "Another one."]
    first = scored(srv, None, docs)
    total = first["usage"]["total_tokens"]
    assert first["compute"] == total > 0
    for path in ("/rerank", "/v1/rerank", "/api/v1/rerank", "/infinity/rerank"):
        hit = scored(srv, None, docs, path)
        assert hit["compute"] == 0
        assert hit["usage"] == {"total_tokens": total, "prompt_tokens_details": {"cached_tokens": total}}, path
    assert total == pair_tokens(reference, docs, query=ASKED)
    # Partly cached, and a document repeated within the request (scored once, counted twice).
    cached, new = pair_tokens(reference, docs[:1], query=ASKED), pair_tokens(reference, ["A new one."], query=ASKED)
    mixed = scored(srv, None, [docs[0], "A new one.", "A new one."])
    assert mixed["compute"] == new
    assert mixed["usage"] == {"total_tokens": cached + 2 * new, "prompt_tokens_details": {"cached_tokens": cached + new}}


# -- 3. X-Priority lowers, never raises ---------------------------------------------------------
NIGHTLY, CHAT, TRUSTED = "sk-nightly-0123456789", "sk-chat-0123456789", "sk-trusted-0123456789"


def test_a_batch_key_asking_for_interactive_does_not_jump_ahead(tiny_model):
    """The issue: a key configured `priority: batch` sent `X-Priority: interactive` and an
    interactive tenant's request waited behind it."""
    from reranker_serve.app import create_app
    from reranker_serve.engine import Engine
    from fakes import FakeModel

    keys = {"nightly": {"key": NIGHTLY, "priority": "batch"}, "chat": CHAT,
            "trusted": {"key": TRUSTED, "priority": "batch", "max_priority": "interactive"}}
    settings = settings_for(tiny_model, api_keys=json.dumps(keys), batch_size=2)
    srv = RunningServer(create_app(settings, engines=[Engine(FakeModel(delay=0.05), settings)]))
    finished: list[str] = []
    served_at: dict[str, str] = {}

    def post(name: str, key: str, docs: list[str], priority: str | None = None) -> None:
        headers = {**bearer(key), **({"X-Priority": priority} if priority else {})}
        r = httpx.post(f"{srv.url}/rerank", json={"query": "q", "documents": docs}, headers=headers, timeout=60)
        assert r.status_code == 200
        served_at[name] = r.headers.get("x-priority")
        finished.append(name)

    try:
        flood = threading.Thread(target=post, args=("nightly", NIGHTLY, ["7 7 7"] * 40, "interactive"))
        flood.start()
        time.sleep(0.3)  # the flood is queued and being served, two pairs a batch
        post("chat", CHAT, ["9 9 9"] * 40)
        flood.join(60)
        post("trusted", TRUSTED, ["8 8 8"], "interactive")  # allowed explicitly
        post("lowered", CHAT, ["8 8 8"], "batch")  # lowering is always allowed
    finally:
        srv.stop()
    assert finished[:2] == ["chat", "nightly"]
    assert served_at == {"nightly": "batch", "chat": "interactive", "trusted": "interactive", "lowered": "batch"}


def test_max_priority_below_priority_is_a_start_up_error():
    with pytest.raises(ConfigError, match="key 'x': max_priority 'batch' is below priority 'interactive'"):
        start_up_settings(_env_file=None, api_keys=json.dumps({"x": {"key": "sk-0123456789", "max_priority": "batch"}}))
