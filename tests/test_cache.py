"""The score cache (RERANKER_CACHE_MB): hits are the computed floats, only misses reach the
model and count as tokens, every setting that changes a score changes the key, LRU within the
budget, Cache-Control bypasses it, and its metrics count what happened."""

from __future__ import annotations

import dataclasses
import tracemalloc
from pathlib import Path
from types import SimpleNamespace

import pytest
from prometheus_client.parser import text_string_to_metric_families

from reranker_serve.cache import ENTRY_BYTES, CachedScore, ScoreCache, bypass_requested
from reranker_serve.config import Settings
from reranker_serve.models import EncodeOptions
from reranker_serve.models.base import sigmoid
from conftest import DOCS, QUERY, build_tiny_model
from llm_models import build_qwen3

CACHE_MB = 4.0
LONG = "The committee met on Tuesday to discuss the annual budget and other matters. " * 12 + "Paris is in France."


def metric(srv, name: str, **labels: str) -> float:
    """The value of one sample of /metrics (0 when absent)."""
    for family in text_string_to_metric_families(srv.client.get("/metrics").text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


def counts(srv, model: str = "tiny-reranker") -> tuple[float, float]:
    return (metric(srv, "reranker_cache_hits_total", model=model),
            metric(srv, "reranker_cache_misses_total", model=model))


def rerank(srv, docs: list[str], path: str = "/rerank", headers: dict | None = None, **extra) -> dict:
    """{document index: score} and the tokens the reply says were fed to the model."""
    body = {"query": extra.pop("query", QUERY), ("texts" if "truncation_direction" in extra else "documents"): docs,
            **extra}
    r = srv.client.post(path, json=body, headers=headers or {})
    assert r.status_code == 200, r.text
    data = r.json()
    rows = data if isinstance(data, list) else data["results"]
    scores = {row["index"]: row.get("relevance_score", row.get("score")) for row in rows}
    assert sorted(scores) == list(range(len(docs)))
    return {"scores": [scores[i] for i in range(len(docs))], "tokens": int(r.headers["x-compute-tokens"])}


def pair_tokens(reference, docs: list[str], query: str = QUERY) -> int:
    tok = reference.tokenizer
    tok.truncation_side = "right"
    return sum(len(tok(query, d, truncation="only_second", max_length=128)["input_ids"]) for d in docs)


@pytest.fixture(scope="module")
def srv(serve):
    return serve(cache_mb=CACHE_MB)


def test_hits_are_the_computed_floats(srv, serve, reference):
    docs = [f"{d} (hits {i})" for i, d in enumerate(DOCS)]
    first = rerank(srv, docs)
    hits, misses = counts(srv)
    again = rerank(srv, docs)
    assert again["scores"] == first["scores"]  # ==: the very floats, through JSON and back
    assert first["tokens"] == pair_tokens(reference, docs) and again["tokens"] == 0
    assert counts(srv) == (hits + len(docs), misses)
    assert first["scores"] == pytest.approx(reference.scores(QUERY, docs), abs=1e-5)
    # The same request computed by a server without a cache: the same floats, bit for bit.
    assert rerank(serve(), docs)["scores"] == again["scores"]
    # The cache holds raw logits; the activation is applied after it, as for computed scores.
    raw = rerank(srv, docs, raw_scores=True)
    assert raw["tokens"] == 0
    assert [sigmoid(x) for x in raw["scores"]] == first["scores"]
    assert raw["scores"] == pytest.approx(reference.logits(QUERY, docs), abs=1e-5)


def test_a_request_served_partly_from_the_cache(srv, reference):
    seen = [f"{d} (partial {i})" for i, d in enumerate(DOCS[:3])]
    before = rerank(srv, seen)
    new = ["A brand new document about Paris.", "Another unseen text about cats."]
    docs = [new[0], seen[2], new[1], seen[0]]
    hits, misses = counts(srv)
    mixed = rerank(srv, docs)
    assert counts(srv) == (hits + 2, misses + 2)
    assert mixed["tokens"] == pair_tokens(reference, new)  # only the misses were fed to the model
    assert mixed["scores"][1] == before["scores"][2] and mixed["scores"][3] == before["scores"][0]
    assert mixed["scores"] == pytest.approx(reference.scores(QUERY, docs), abs=1e-5)


def test_a_document_repeated_in_one_request_is_scored_once(srv, reference):
    doc = "Paris is the capital of France (repeated)."
    out = rerank(srv, [doc, "Berlin (repeated)", doc])
    assert out["tokens"] == pair_tokens(reference, [doc, "Berlin (repeated)"])
    assert out["scores"][0] == out["scores"][2]


@pytest.mark.parametrize("path,first,second", [
    # TEI: the end a long document is cut at
    ("/rerank", {"truncation_direction": "right"}, {"truncation_direction": "left"}),
    # Cohere v2: each document capped before the window
    ("/v2/rerank", {}, {"max_tokens_per_doc": 6}),
    # chunking: a long document scored as its best of N windows
    ("/v1/rerank", {"max_chunks_per_doc": 1}, {"max_chunks_per_doc": 3}),
    # a different query is a different pair
    ("/rerank", {}, {"query": "Which city is the capital of Germany?"}),
], ids=["truncation_direction", "max_tokens_per_doc", "max_chunks_per_doc", "query"])
def test_a_setting_that_changes_the_score_is_a_miss(srv, path, first, second):
    docs = [LONG + f" ({path} {sorted(second)})"]
    a = rerank(srv, docs, path, **first)
    hits, misses = counts(srv)
    b = rerank(srv, docs, path, **second)
    assert counts(srv) == (hits, misses + 1) and b["tokens"] > 0
    # ...and each setting keeps its own entry: both are hits now.
    assert rerank(srv, docs, path, **first) == {**a, "tokens": 0}
    assert rerank(srv, docs, path, **second) == {**b, "tokens": 0}


class FakeEngine:
    """What the cache reads of an engine: its model's resolved properties and its spec."""

    def __init__(self, model_dir: Path) -> None:
        self.spec = Settings(_env_file=None, model_path=model_dir).model_specs[0]
        self.model = SimpleNamespace(family="encoder", backend="torch", dtype_name="float32", device="cpu",
                                     max_length=128)


def test_every_encoding_option_and_the_model_are_part_of_the_key(tiny_model):
    """Server-wide settings (max_length, chunk overlap) reach the key through the encoding
    options; every field of EncodeOptions changes it, so does the model."""
    cache = ScoreCache(max_bytes=1 << 20)
    engine = FakeEngine(tiny_model)
    base = EncodeOptions(max_length=128)
    key = cache.keys(engine, base, QUERY, ["doc"])[0]
    assert cache.keys(engine, base, QUERY, ["doc"])[0] == key  # deterministic
    changed = {"max_length": 64, "truncate": False, "truncation_direction": "left", "max_doc_tokens": 10,
               "max_chunks": 2, "chunk_overlap": 8, "instruction": "judge"}
    assert set(changed) == {f.name for f in dataclasses.fields(EncodeOptions)}  # a new option needs a case here
    for name, value in changed.items():
        assert cache.keys(engine, dataclasses.replace(base, **{name: value}), QUERY, ["doc"])[0] != key, name
    # Texts are length-prefixed: moving characters between query and document is another pair.
    assert cache.keys(engine, base, "ab", ["c"]) != cache.keys(engine, base, "a", ["bc"])
    # Another engine (another model, or the same one loaded again) shares nothing.
    other = FakeEngine(tiny_model)
    assert cache.keys(other, base, QUERY, ["doc"])[0] != key
    assert cache.keys(engine, base, QUERY, ["doc"])[0] == key


@pytest.fixture(scope="module")
def two_models(serve, tiny_model: Path, tmp_path_factory: pytest.TempPathFactory):
    other = build_tiny_model(tmp_path_factory.mktemp("other") / "other-reranker", seed=1)
    return serve(cache_mb=CACHE_MB, models=f"tiny={tiny_model},alias={tiny_model},other={other}")


def test_each_model_has_its_own_entries_and_aliases_share_them(two_models, reference):
    docs = ["A document for two models."]
    a = rerank(two_models, docs, model="tiny")
    b = rerank(two_models, docs, model="other")
    assert b["tokens"] > 0 and b["scores"] != a["scores"]
    assert counts(two_models, "other") == (0, 1)
    # `alias` names the same model (one engine): its scores are the same, so they are shared.
    assert rerank(two_models, docs, model="alias") == {**a, "tokens": 0}
    assert counts(two_models, "tiny") == (1, 1)  # the label is the model's name, whatever alias asked


def test_an_instruction_is_part_of_the_key(serve, tmp_path_factory):
    qwen3 = build_qwen3(tmp_path_factory.mktemp("llm") / "qwen3")
    srv = serve(cache_mb=CACHE_MB, models=f"qwen3={qwen3}", max_length=256)
    docs = ["Paris is the capital of France."]
    default = rerank(srv, docs)
    judged = rerank(srv, docs, instruction="Judge whether the Document answers the Query")
    assert judged["tokens"] > 0 and judged["scores"] != default["scores"]
    assert rerank(srv, docs, instruction="Judge whether the Document answers the Query") == {**judged, "tokens": 0}
    assert rerank(srv, docs) == {**default, "tokens": 0}


def test_least_recently_used_is_evicted_first(serve):
    srv = serve(cache_mb=3 * ENTRY_BYTES / 2**20)  # room for exactly three scores
    a, b, c, d = (f"LRU document {x}" for x in "abcd")
    rerank(srv, [a, b, c])
    assert rerank(srv, [a])["tokens"] == 0  # a is now the most recently used
    rerank(srv, [d])  # full: b, the least recently used, makes room
    assert metric(srv, "reranker_cache_entries") == 3
    assert metric(srv, "reranker_cache_bytes") == 3 * ENTRY_BYTES
    assert metric(srv, "reranker_cache_evictions_total") == 1
    assert rerank(srv, [a])["tokens"] == 0 and rerank(srv, [d])["tokens"] == 0
    assert rerank(srv, [b])["tokens"] > 0  # evicted; scoring it again evicts c
    assert rerank(srv, [c])["tokens"] > 0


@pytest.mark.parametrize("header", ["no-cache", "no-store", "max-age=0, No-Store"])
def test_cache_control_bypasses_the_cache(srv, header):
    docs = [f"Bypassed document ({header})"]
    hits, misses = counts(srv)
    first = rerank(srv, docs, headers={"Cache-Control": header})
    assert rerank(srv, docs, "/v1/rerank", headers={"Cache-Control": header}) == first  # computed both times
    assert first["tokens"] > 0 and counts(srv) == (hits, misses)  # a bypassing request is not counted
    assert rerank(srv, docs)["tokens"] > 0  # nothing was stored by the bypassing requests
    assert rerank(srv, docs)["tokens"] == 0  # (this one was)
    assert rerank(srv, docs, headers={"Cache-Control": header})["tokens"] > 0  # and a stored one is not read


def test_bypass_header_parsing():
    assert bypass_requested({"cache-control": "no-cache"})
    assert bypass_requested({"cache-control": "private, NO-STORE"})
    assert bypass_requested({"pragma": "no-cache"})
    assert not bypass_requested({"cache-control": "max-age=60"})
    assert not bypass_requested({})


def test_off_with_zero(serve, reference):
    srv = serve(cache_mb=0)
    docs = ["A document with no cache."]
    first, again = rerank(srv, docs), rerank(srv, docs)
    assert first["tokens"] == again["tokens"] == pair_tokens(reference, docs)
    assert counts(srv) == (0, 0) and metric(srv, "reranker_cache_entries") == 0


def test_the_memory_charged_is_the_memory_used(tiny_model):
    cache = ScoreCache(max_bytes=1 << 30)
    keys = cache.keys(FakeEngine(tiny_model), EncodeOptions(max_length=128), QUERY, [f"doc {i}" for i in range(20000)])
    tracemalloc.start()
    cache.put_many([(k, CachedScore(float(i) + 0.25, 300 + i)) for i, k in enumerate(keys)])
    used, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    # The keys existed before (the service computes them anyway), so the real cost is at least
    # the (score, tokens) value and the table's share; the charge is within 35% of key + value + table.
    charged = cache.bytes
    real = used + len(keys) * 49  # the key objects the cache now keeps alive
    assert abs(charged - real) / real < 0.35, (charged, real)


def test_a_pair_in_flight_is_computed_once(serve, reference):
    """Two requests for the same pairs at once (a retry, two chat turns): the second waits for
    the first's computation instead of running it again."""
    import concurrent.futures

    # The batcher waits up to 300 ms for company, so the second request arrives while the first
    # request's pairs are still queued.
    srv = serve(cache_mb=CACHE_MB, batch_wait_ms=300)
    docs = [f"In flight {i}: {d}" for i, d in enumerate(DOCS)]
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        first = pool.submit(rerank, srv, docs)
        import time

        time.sleep(0.1)
        second = pool.submit(rerank, srv, docs)
        a, b = first.result(), second.result()
    assert a["scores"] == b["scores"]
    assert a["scores"] == pytest.approx(reference.scores(QUERY, docs), abs=1e-5)
    assert sorted([a["tokens"], b["tokens"]]) == [0, pair_tokens(reference, docs)]  # fed once
    assert metric(srv, "reranker_tokens_total", model="tiny-reranker") == pair_tokens(reference, docs)


def test_a_request_waiting_for_one_that_leaves_computes_the_pairs_itself(serve, reference):
    import concurrent.futures
    import time

    import httpx

    srv = serve(cache_mb=CACHE_MB, batch_wait_ms=300)
    docs = [f"Abandoned {i}: {d}" for i, d in enumerate(DOCS)]

    def impatient() -> None:  # hangs up while its pairs are still queued: they are dropped
        with pytest.raises(httpx.TimeoutException):
            httpx.post(f"{srv.url}/rerank", json={"query": QUERY, "documents": docs}, timeout=0.15)

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        gone = pool.submit(impatient)
        time.sleep(0.05)
        waiting = pool.submit(rerank, srv, docs)
        gone.result()
        out = waiting.result()
    assert out["tokens"] == pair_tokens(reference, docs)
    assert out["scores"] == pytest.approx(reference.scores(QUERY, docs), abs=1e-5)
