"""Tokenization of pairs: template, truncation that keeps the query, token counts."""

from __future__ import annotations

import pytest

from reranker_serve.config import Settings
from reranker_serve.device import Placement
from reranker_serve.errors import RerankError
from reranker_serve.models import EncodeOptions, load_model

import torch


@pytest.fixture(scope="module")
def model(tiny_model):
    spec = Settings(_env_file=None, model_path=tiny_model, max_length=128).model_specs[0]
    return load_model(spec, Placement("cpu", torch.float32))


def test_pairs_match_the_tokenizer_pair_encoding(model, reference):
    q, docs = "capital of France", ["Paris is the capital.", "The cat sat."]
    pairs = model.encode(q, docs, EncodeOptions(max_length=128))
    assert [p.ids for p in pairs] == [reference.tokenizer(q, d)["input_ids"] for d in docs]


def test_long_document_is_cut_and_the_query_kept(model, reference):
    q = "capital of France"
    q_ids = reference.tokenizer(q, add_special_tokens=False)["input_ids"]
    doc = "Paris is the capital of France. " * 50
    for side in ("right", "left"):
        (pair,) = model.encode(q, [doc], EncodeOptions(max_length=64, truncation_direction=side))
        assert len(pair) == 64
        assert pair.ids[: 1 + len(q_ids)] == [0] + q_ids  # <s> query
        assert pair.ids[1 + len(q_ids): 3 + len(q_ids)] == [2, 2] and pair.ids[-1] == 2


def test_long_query_keeps_half_the_window_for_the_document(model):
    q = "capital of France " * 40
    (pair,) = model.encode(q, ["Paris is the capital of France. " * 40], EncodeOptions(max_length=64))
    assert len(pair) == 64
    doc_part = pair.ids[pair.ids.index(2) + 2: -1]
    assert len(doc_part) == (64 - 4) // 2


def test_short_pairs_are_untouched_and_truncate_false_rejects(model):
    (pair,) = model.encode("q", ["short doc"], EncodeOptions(max_length=64, truncate=False))
    assert len(pair) < 64
    with pytest.raises(RerankError, match="must have less than 64 tokens"):
        model.encode("q", ["word " * 100], EncodeOptions(max_length=64, truncate=False))


def test_max_doc_tokens(model, reference):
    q_len = len(reference.tokenizer("q", add_special_tokens=False)["input_ids"])
    (pair,) = model.encode("q", ["Paris is the capital of France. " * 5], EncodeOptions(max_length=128, max_doc_tokens=3))
    assert len(pair) == 4 + q_len + 3


def test_max_length_is_capped_by_the_model(tiny_model):
    spec = Settings(_env_file=None, model_path=tiny_model, max_length=4096).model_specs[0]
    assert load_model(spec, Placement("cpu", torch.float32)).max_length == 128  # 130 positions - RoBERTa offset
