"""Every reranker family, served by one multi-model server, against the formula of its model card.

The references below are written from the model cards and FlagEmbedding's code, one pair at a
time with no padding, in float32: the server batches, pads (left for decoders) and shares
batches between requests, and must still agree within 1e-5.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from conftest import DOCS, QUERY, RunningServer, load_error, settings_for
from llm_models import build_gemma, build_qwen3, build_remote, convert_qwen3_seq_cls
from reranker_serve.app import create_app
from reranker_serve.config import Settings
from reranker_serve.errors import ModelLoadError
from reranker_serve.models import detect_family

QWEN3_PREFIX = ('<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the '
                'Instruct provided. Note that the answer can only be "yes" or "no".<|im_end|>\n<|im_start|>user\n')
QWEN3_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
QWEN3_TASK = "Given a web search query, retrieve relevant passages that answer the query"
FLAG_PROMPT = ("Given a query A and a passage B, determine whether the passage contains an answer to the query by "
               "providing a prediction of either 'Yes' or 'No'.")
LIGHT_PROMPT = "Predict whether passage B contains an answer to query A."
LONG_DOC = "Paris is the capital of France and its largest city, on the river Seine. " * 3


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


@pytest.fixture(scope="module")
def models(tmp_path_factory, tiny_model) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("families")
    qwen3 = build_qwen3(base / "qwen3")
    return {
        "encoder": tiny_model,
        "qwen3": qwen3,
        "qwen3-seq-cls": convert_qwen3_seq_cls(qwen3, base / "qwen3-seq-cls"),
        "gemma": build_gemma(base / "gemma"),
        "layerwise": build_remote(base / "layerwise", kind="layerwise"),
        "lightweight": build_remote(base / "lightweight", kind="lightweight"),
    }


@pytest.fixture(scope="module")
def server(models):
    entries = [
        {"model": str(models["encoder"]), "name": "tiny-reranker", "max_length": 128},
        {"model": str(models["qwen3"]), "name": ["qwen3", "Qwen/Qwen3-Reranker-0.6B"]},
        {"model": str(models["qwen3-seq-cls"]), "name": "qwen3-seq-cls"},
        {"model": str(models["gemma"]), "name": "gemma"},
        {"model": str(models["layerwise"]), "name": "layerwise", "cutoff_layer": 3},
        {"model": str(models["lightweight"]), "name": "lightweight", "cutoff_layer": 4, "compress_ratio": 2,
         "compress_layers": [2]},
    ]
    srv = RunningServer(create_app(settings_for(models["encoder"], models=json.dumps(entries), max_length=512,
                                                trust_remote_code=True)))
    yield srv
    srv.stop()


# -- references ------------------------------------------------------------------------------------
class Qwen3Card:
    """Qwen3-Reranker's model card: prefix + "<Instruct>: …\\n<Query>: …\\n<Document>: …" + suffix,
    P(yes) of the softmax over the "no" and "yes" logits at the last position."""

    def __init__(self, folder: Path) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(folder, padding_side="left")
        self.model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        self.yes = self.tokenizer.convert_tokens_to_ids("yes")
        self.no = self.tokenizer.convert_tokens_to_ids("no")

    def ids(self, query: str, doc: str, instruction: str = QWEN3_TASK) -> list[int]:
        body = f"<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {doc}"
        prefix = self.tokenizer.encode(QWEN3_PREFIX, add_special_tokens=False)
        suffix = self.tokenizer.encode(QWEN3_SUFFIX, add_special_tokens=False)
        return prefix + self.tokenizer(body, add_special_tokens=False)["input_ids"] + suffix

    def scores(self, query: str, docs: list[str], instruction: str = QWEN3_TASK) -> list[float]:
        out = []
        with torch.inference_mode():
            for doc in docs:
                last = self.model(torch.tensor([self.ids(query, doc, instruction)])).logits[0, -1]
                pair = torch.log_softmax(torch.stack([last[self.no], last[self.yes]]), dim=0)
                out.append(float(pair[1].exp()))
        return out


class FlagCard:
    """FlagEmbedding's decoder rerankers (compute_score(normalize=True)): [bos] "A: q" + "\\n" + "B: p",
    then "\\n" + prompt; the sigmoid of the score at the last position."""

    def __init__(self, folder: Path, *, prompt: str = FLAG_PROMPT, remote: bool = False) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32,
                                                          trust_remote_code=remote).eval()
        self.prompt = prompt
        self.yes = self.tokenizer("Yes", add_special_tokens=False)["input_ids"][0]

    def parts(self, query: str, doc: str, max_length: int = 512) -> tuple[list[int], list[int], list[int]]:
        tok = self.tokenizer
        q = tok(f"A: {query}", add_special_tokens=False, max_length=max_length * 3 // 4, truncation=True)["input_ids"]
        p = tok(f"B: {doc}", add_special_tokens=False, max_length=max_length, truncation=True)["input_ids"]
        sep = tok("\n", add_special_tokens=False)["input_ids"]
        prompt = tok(self.prompt, add_special_tokens=False)["input_ids"]
        # prepare_for_model([bos] + q, sep + p, truncation="only_second", max_length=max_length + |sep| + |prompt|)
        first = [tok.bos_token_id] + q
        second = (sep + p)[: max_length + len(sep) + len(prompt) - len(first)]
        return first + sep, first + second + sep + prompt, sep + prompt

    def scores(self, query: str, docs: list[str], **forward) -> list[float]:
        out = []
        with torch.inference_mode():
            for doc in docs:
                head, ids, tail = self.parts(query, doc)
                if forward.get("layers"):  # layer-wise: the chosen cutoff layer's score at the last token
                    extra = dict(cutoff_layers=forward["layers"], output_hidden_states=True)
                    if "compress_ratio" in forward:
                        extra.update(compress_ratio=forward["compress_ratio"], compress_layer=forward["compress_layer"],
                                     query_lengths=[len(head)], prompt_lengths=[len(tail)])
                    result = self.model(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                        **extra)
                    last = int(result.attention_masks[0][0].sum()) - 1 if "compress_ratio" in forward else -1
                    out.append(sigmoid(float(result.logits[0][0, last])))
                else:
                    out.append(sigmoid(float(self.model(torch.tensor([ids])).logits[0, -1, self.yes])))
        return out


def served(srv: RunningServer, model: str, docs: list[str], **extra) -> dict[int, float]:
    r = srv.client.post("/rerank", json={"model": model, "query": QUERY, "documents": docs, **extra})
    assert r.status_code == 200, r.text
    assert r.json()["model"] == model
    return {x["index"]: x["relevance_score"] for x in r.json()["results"]}


def assert_close(got: dict[int, float], expected: list[float]) -> None:
    assert len(got) == len(expected)
    for i, score in got.items():
        assert score == pytest.approx(expected[i], abs=1e-5), (i, score, expected[i])
    spread = max(expected) - min(expected)
    assert spread > 1e-3, f"scores too alike to tell anything apart: {expected}"


DOCS_OF_MANY_LENGTHS = DOCS + [LONG_DOC, "Paris."]


# -- each family -------------------------------------------------------------------------------------
def test_qwen3_causal_lm_matches_its_model_card(server, models):
    card = Qwen3Card(models["qwen3"])
    assert_close(served(server, "qwen3", DOCS_OF_MANY_LENGTHS), card.scores(QUERY, DOCS_OF_MANY_LENGTHS))
    # raw_scores: the log-odds of yes against no
    raw = served(server, "qwen3", DOCS, raw_scores=True)
    for i, p in enumerate(card.scores(QUERY, DOCS)):
        assert raw[i] == pytest.approx(math.log(p / (1 - p)), abs=1e-4)


def test_qwen3_instruction_per_request(server, models):
    card = Qwen3Card(models["qwen3"])
    task = "Given a question about geography, find the passage that names the city"
    got = served(server, "qwen3", DOCS, instruction=task)
    assert_close(got, card.scores(QUERY, DOCS, task))
    default = served(server, "qwen3", DOCS)
    assert any(abs(got[i] - default[i]) > 1e-4 for i in got)  # the instruction is really used


def test_qwen3_seq_cls_checkpoint_scores_like_the_causal_lm(server, models):
    expected = Qwen3Card(models["qwen3"]).scores(QUERY, DOCS_OF_MANY_LENGTHS)
    assert_close(served(server, "qwen3-seq-cls", DOCS_OF_MANY_LENGTHS), expected)


def test_gemma_llm_reranker_matches_flagembedding(server, models):
    card = FlagCard(models["gemma"])
    assert_close(served(server, "gemma", DOCS_OF_MANY_LENGTHS), card.scores(QUERY, DOCS_OF_MANY_LENGTHS))
    raw = served(server, "gemma", DOCS[:2], raw_scores=True)  # the "Yes" logit itself
    for i, p in enumerate(card.scores(QUERY, DOCS[:2])):
        assert raw[i] == pytest.approx(math.log(p / (1 - p)), abs=1e-4)


def test_layerwise_reranker_uses_the_configured_cutoff_layer(server, models):
    card = FlagCard(models["layerwise"], remote=True)
    expected = card.scores(QUERY, DOCS_OF_MANY_LENGTHS, layers=[3])
    assert_close(served(server, "layerwise", DOCS_OF_MANY_LENGTHS), expected)
    assert card.scores(QUERY, DOCS, layers=[4]) != card.scores(QUERY, DOCS, layers=[3])  # the layer matters


def test_lightweight_reranker_passes_compression_through(server, models):
    card = FlagCard(models["lightweight"], prompt=LIGHT_PROMPT, remote=True)
    expected = card.scores(QUERY, DOCS_OF_MANY_LENGTHS, layers=[4], compress_ratio=2, compress_layer=[2])
    assert_close(served(server, "lightweight", DOCS_OF_MANY_LENGTHS), expected)
    plain = card.scores(QUERY, DOCS_OF_MANY_LENGTHS, layers=[4], compress_ratio=1, compress_layer=[2])
    assert max(abs(a - b) for a, b in zip(plain, expected)) > 1e-4  # compression changes the scores


def test_every_family_in_every_dialect(server):
    for model in ("qwen3", "gemma", "layerwise", "lightweight", "qwen3-seq-cls", "tiny-reranker"):
        native = served(server, model, DOCS)
        bodies = {
            "/v1/rerank": {"model": model, "query": QUERY, "documents": DOCS},
            "/v2/rerank": {"model": model, "query": QUERY, "documents": DOCS},
            "/api/v1/rerank": {"model": model, "query": QUERY, "documents": DOCS},
        }
        for path, body in bodies.items():
            r = server.client.post(path, json=body)
            assert r.status_code == 200, (path, r.text)
            assert {x["index"]: x["relevance_score"] for x in r.json()["results"]} == pytest.approx(native, abs=1e-6)
        tei = server.client.post("/rerank", json={"model": model, "query": QUERY, "texts": DOCS}).json()
        assert {x["index"]: x["score"] for x in tei} == pytest.approx(native, abs=1e-6)


def test_an_encoder_refuses_an_instruction_in_the_dialect_shape(server):
    r = server.client.post("/v1/rerank", json={"model": "tiny-reranker", "query": QUERY, "documents": DOCS,
                                               "instruction": "be nice"})
    assert r.status_code == 400 and "takes no instruction" in r.json()["message"]
    r = server.client.post("/rerank", json={"model": "tiny-reranker", "query": QUERY, "documents": DOCS,
                                            "instruction": "be nice"})
    assert r.status_code == 422 and r.json()["error_type"] == "Validation"


def test_llm_documents_are_chunked_and_scored_by_their_best_window(server, models):
    card = Qwen3Card(models["qwen3"])
    tok = card.tokenizer
    # Words that are one token each (with their leading space), so windows are plain word slices.
    words = [w for w in {w for t in DOCS for w in t.strip(".").split()} if len(tok(" " + w, add_special_tokens=False)
                                                                                ["input_ids"]) == 1]
    words = sorted(words)
    assert len(words) >= 5, words
    doc_words = [words[i % len(words)] for i in range(120)]
    doc = " ".join(doc_words)
    # The prompt and query without the document (an empty document leaves its space as a token of its own).
    max_length = len(card.ids(QUERY, "")) - 1 + 40  # room for 40 document tokens
    r = server.client.post("/rerank", json={"model": "qwen3", "query": QUERY, "documents": [doc],
                                            "max_chunks_per_doc": 3})
    whole = r.json()["results"][0]["relevance_score"]
    assert whole == pytest.approx(card.scores(QUERY, [doc])[0], abs=1e-5)  # fits in 512: one window
    srv = RunningServer(create_app(settings_for(models["qwen3"], max_length=max_length, chunk_overlap=8)))
    try:
        got = srv.client.post("/rerank", json={"query": QUERY, "documents": [doc], "max_chunks_per_doc": 3}).json()
        room = max_length - len(card.ids(QUERY, doc)) + len(doc_words)
        windows = [" ".join(doc_words[s:s + room]) for s in range(0, 3 * (room - 8), room - 8)]
        expected = max(card.scores(QUERY, windows))
        assert got["results"][0]["relevance_score"] == pytest.approx(expected, abs=1e-5)
        assert got["usage"]["total_tokens"] == sum(len(card.ids(QUERY, w)) for w in windows)
        one = srv.client.post("/rerank", json={"query": QUERY, "documents": [doc]}).json()
        assert one["results"][0]["relevance_score"] == pytest.approx(card.scores(QUERY, windows[:1])[0], abs=1e-5)
    finally:
        srv.stop()


# -- detection and start-up ---------------------------------------------------------------------------
@pytest.mark.parametrize("config,family", [
    ({"architectures": ["XLMRobertaForSequenceClassification"], "model_type": "xlm-roberta"}, "encoder"),
    ({"architectures": ["Qwen3ForSequenceClassification"], "model_type": "qwen3"}, "qwen3-seq-cls"),
    ({"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3"}, "qwen3"),
    ({"architectures": ["GemmaForCausalLM"], "model_type": "gemma"}, "llm"),
    ({"architectures": ["LayerWiseMiniCPMForCausalLM"], "model_type": "minicpm"}, "layerwise"),
    ({"architectures": ["CostWiseGemmaForCausalLM"], "model_type": "cost_wise_gemma"}, "lightweight"),
])
def test_family_detection(config, family):
    assert detect_family(config).name == family


def test_detection_refuses_what_it_cannot_score_and_the_override_wins():
    llama = {"architectures": ["LlamaForCausalLM"], "model_type": "llama"}
    # Refused without advice to read it with another family's prompt (silently wrong scores).
    with pytest.raises(ModelLoadError, match="is not a known reranker") as refused:
        detect_family(llama)
    assert "RERANKER_MODEL_TYPE=llm" not in str(refused.value)
    assert detect_family(llama, "llm").name == "llm"
    # (A bare BertModel is now a candidate modular CrossEncoder: refused at load without modules.json,
    # tests/test_nemotron_st.py.)
    with pytest.raises(ModelLoadError, match=r"architectures=\['GPT2LMHeadModel'\], model_type='gpt2'"):
        detect_family({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"})


def test_remote_code_needs_consent(models):
    # Without consent the published architectures run natively (tests/test_layerwise_native.py);
    # a stand-in with code of its own is not that architecture, and the error says how to run its code.
    for kind in ("layerwise", "lightweight"):
        error = load_error(settings_for(models[kind]))
        assert "RERANKER_TRUST_REMOTE_CODE=true" in error and kind in error


def test_model_code_written_for_another_transformers_fails_with_a_clear_message(tmp_path):
    folder = build_remote(tmp_path / "old-code", kind="layerwise")
    code = folder / "modeling_toy.py"  # what the published minicpm-layerwise code imports
    code.write_text("from transformers.utils.import_utils import is_torch_fx_available\n" + code.read_text())
    error = load_error(settings_for(folder, trust_remote_code=True))
    assert "is_torch_fx_available" in error and "does not run on the installed transformers" in error


def test_model_type_override_loads_a_model_as_another_family(models):
    # The Qwen3 causal LM read as a FlagEmbedding LLM reranker: "A:/B:" prompt, the "Yes" logit.
    srv = RunningServer(create_app(settings_for(models["qwen3"], model_type="llm", max_length=512)))
    try:
        info = srv.client.get("/info").json()
        assert info["models"][0]["family"] == "llm"
    finally:
        srv.stop()


def test_settings_validate_model_options():
    spec = Settings(_env_file=None, model_type="QWEN3", compress_layers="24, 40", cutoff_layer="28").model_specs[0]
    assert (spec.model_type, spec.compress_layers, spec.cutoff_layer) == ("qwen3", (24, 40), 28)


def test_one_family_record_answers_every_question():
    from typing import get_args

    from reranker_serve.config import ModelType
    from reranker_serve.families import FAMILIES
    from reranker_serve.models.loader import LOADERS

    assert get_args(ModelType) == ("auto", *FAMILIES)  # settings accept exactly the families
    assert LOADERS.keys() == FAMILIES.keys()  # every family has its loader, and only families do
    for record in FAMILIES.values():
        assert callable(LOADERS[record.name]), record.name
    assert [f.name for f in FAMILIES.values() if f.remote_code] == []  # layer-wise ones run natively
    assert [f.name for f in FAMILIES.values() if not f.decoder] == ["encoder", "st-crossencoder"]
    assert [f.name for f in FAMILIES.values() if f.openvino] == ["nemotron-rerank", "encoder", "st-crossencoder"]
    assert [f.name for f in FAMILIES.values() if f.unpadded] == ["encoder", "qwen3", "llm", "mxbai-rerank-v2"]
    assert [f.name for f in FAMILIES.values() if f.shares_prefix] == ["qwen3", "llm", "mxbai-rerank-v2"]
