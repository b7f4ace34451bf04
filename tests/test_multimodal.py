"""Multimodal rerankers over HTTP: image documents (and queries) ranked beside text, and the
images a server must refuse.

A tiny random-weight Qwen3-VL-Reranker-shaped model (vision_models.py) is served; every score
is compared with the reference formula computed here with transformers, fp32, one pair at a
time: the official script's messages through the chat template, the image processor's patches
(the processor's own expansion of each <|image_pad|> into the image's merged patches), the model
forward, sigmoid(logit(yes) - logit(no)) at the last position.
"""

from __future__ import annotations

import http.server
import math
import threading
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from conftest import RunningServer, settings_for
from reranker_serve.app import create_app
from vision_models import b64, build_jina_m0, build_qwen3_vl, data_url, jpeg, png, png_header

QUERY = "What is the capital of France?"
SYSTEM = ('Judge whether the Document meets the requirements based on the Query and the Instruct provided. '
          'Note that the answer can only be "yes" or "no".')
INSTRUCTION = "Given a search query, retrieve relevant candidates that answer the query."
MIN_PIXELS, MAX_PIXELS = 4 * 32 * 32, 1800 * 32 * 32


@pytest.fixture(scope="module")
def vl_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_qwen3_vl(tmp_path_factory.mktemp("vl") / "Qwen3-VL-Reranker-tiny")


class VLReference:
    """The official script's scoring, computed directly with transformers."""

    def __init__(self, model_dir: Path) -> None:
        import torch
        from transformers import AutoImageProcessor, AutoTokenizer, Qwen3VLForConditionalGeneration

        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.images = AutoImageProcessor.from_pretrained(model_dir)
        self.model = Qwen3VLForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32).eval()
        vocab = self.tokenizer.get_vocab()
        self.yes, self.no = vocab["yes"], vocab["no"]

    @staticmethod
    def _content(item: Any, prefix: str) -> tuple[list[dict[str, Any]], list[bytes]]:
        text, image = (item, None) if isinstance(item, str) else (item.get("text"), item.get("image"))
        content: list[dict[str, Any]] = [{"type": "text", "text": prefix}]
        if not text and not image:
            return content + [{"type": "text", "text": "NULL"}], []
        images = []
        if image:
            content.append({"type": "image", "image": "x"})
            images.append(image)
        if text:
            content.append({"type": "text", "text": text})
        return content, images

    def logit(self, query: Any, doc: Any, *, instruction: str = INSTRUCTION) -> tuple[float, int]:
        """(logit(yes) - logit(no), tokens) of one pair; images are raw bytes in {"image": ...}."""
        import io

        from PIL import Image

        q, q_images = self._content(query, "<Query>:")
        d, d_images = self._content(doc, "\n<Document>:")
        messages = [{"role": "system", "content": [{"type": "text", "text": SYSTEM}]},
                    {"role": "user", "content": [{"type": "text", "text": "<Instruct>: " + instruction}, *q, *d]}]
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        pictures = [Image.open(io.BytesIO(data)).convert("RGB") for data in q_images + d_images]
        extra: dict[str, Any] = {}
        if pictures:
            out = self.images(images=pictures, return_tensors="pt",
                              size={"shortest_edge": MIN_PIXELS, "longest_edge": MAX_PIXELS})
            grids = out["image_grid_thw"]
            merge = self.images.merge_size ** 2
            parts = text.split("<|image_pad|>")  # the processor's expansion of each placeholder
            text = parts[0] + "".join("<|image_pad|>" * (int(g.prod()) // merge) + rest
                                      for g, rest in zip(grids, parts[1:]))
            extra = {"pixel_values": out["pixel_values"], "image_grid_thw": grids}
        ids = self.tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        image_id = self.model.config.image_token_id
        with self.torch.inference_mode():
            logits = self.model(input_ids=ids, attention_mask=self.torch.ones_like(ids),
                                mm_token_type_ids=(ids == image_id).int(), use_cache=False, **extra).logits[0, -1]
        return float(logits[self.yes] - logits[self.no]), ids.shape[1]

    def scores(self, query: Any, docs: list[Any]) -> list[float]:
        return [1 / (1 + math.exp(-self.logit(query, d)[0])) for d in docs]


@pytest.fixture(scope="module")
def vl_reference(vl_model: Path) -> VLReference:
    return VLReference(vl_model)


@pytest.fixture(scope="module")
def vl_serve(vl_model: Path) -> Iterator[Any]:
    servers: dict[str, RunningServer] = {}

    def start(**overrides: Any) -> RunningServer:
        key = repr(sorted(overrides.items()))
        if key not in servers:
            settings = settings_for(vl_model, max_length=1024, warmup_seconds=0, **overrides)
            servers[key] = RunningServer(create_app(settings))
        return servers[key]

    yield start
    for server in servers.values():
        server.stop()


@pytest.fixture(scope="module")
def vl(vl_serve: Any) -> httpx.Client:
    return vl_serve().client


def _wire(doc: Any) -> Any:
    """A document as a Jina client sends it: images base64-encoded."""
    if isinstance(doc, str):
        return doc
    return {k: (b64(v) if k == "image" else v) for k, v in doc.items()}


DOCS: list[Any] = [
    "Paris is the capital of France.",
    {"image": png(40, 32, seed=1)},
    {"text": "Berlin is the capital of Germany."},
    {"image": jpeg(90, 70, seed=2)},
    {"image": png(24, 64, seed=3), "text": "a map of Paris"},
]


def test_jina_image_documents_score_as_the_reference(vl: httpx.Client, vl_reference: VLReference):
    r = vl.post("/api/v1/rerank", json={"query": QUERY, "documents": [_wire(d) for d in DOCS]})
    assert r.status_code == 200, r.text
    body = r.json()
    expected = vl_reference.scores(QUERY, DOCS)
    assert len(body["results"]) == len(DOCS)
    for result in body["results"]:
        assert result["relevance_score"] == pytest.approx(expected[result["index"]], abs=1e-4)
        # return_documents (Jina's default): an image document comes back as sent
        sent = _wire(DOCS[result["index"]])
        assert result["document"] == ({"text": sent} if isinstance(sent, str) else sent)
    scores = [x["relevance_score"] for x in body["results"]]
    assert scores == sorted(scores, reverse=True)
    # usage counts each pair's tokens, image patches included, as the processor counts them
    assert body["usage"]["total_tokens"] == sum(vl_reference.logit(QUERY, d)[1] for d in DOCS)


def test_an_image_query_ranks_text_and_images(vl: httpx.Client, vl_reference: VLReference):
    query = {"image": png(64, 48, seed=7)}
    docs = ["Paris is the capital of France.", {"image": png(40, 40, seed=8)}]
    r = vl.post("/api/v1/rerank", json={"query": _wire(query), "documents": [_wire(d) for d in docs],
                                        "top_n": 1, "return_documents": False})
    assert r.status_code == 200, r.text
    expected = vl_reference.scores(query, docs)
    best = max(range(2), key=lambda i: expected[i])
    [result] = r.json()["results"]
    assert result["index"] == best and "document" not in result
    assert result["relevance_score"] == pytest.approx(expected[best], abs=1e-4)


def test_data_urls_and_text_documents_batch_like_single_pairs(vl: httpx.Client, vl_reference: VLReference):
    docs = [{"image": png(50 + 7 * i, 40, seed=20 + i)} for i in range(4)] + ["The cat sat on the mat."]
    wire = [{"image": data_url(d["image"])} if isinstance(d, dict) else d for d in docs]
    r = vl.post("/api/v1/rerank", json={"query": QUERY, "documents": wire}, headers={"X-Priority": "batch"})
    assert r.status_code == 200, r.text
    assert r.headers["X-Priority"] == "batch"
    expected = vl_reference.scores(QUERY, docs)
    for result in r.json()["results"]:
        assert result["relevance_score"] == pytest.approx(expected[result["index"]], abs=1e-4)


def test_the_instruction_reaches_the_prompt(vl: httpx.Client, vl_reference: VLReference):
    doc = {"image": png(40, 32, seed=1)}
    r = vl.post("/api/v1/rerank", json={"query": QUERY, "documents": [_wire(doc)], "instruction": "Find maps"})
    assert r.status_code == 200, r.text
    raw = vl_reference.logit(QUERY, doc, instruction="Find maps")[0]
    assert r.json()["results"][0]["relevance_score"] == pytest.approx(1 / (1 + math.exp(-raw)), abs=1e-4)


def test_the_configured_instruction_is_the_default(vl_serve: Any, vl_reference: VLReference):
    client = vl_serve(instruction="Find maps of cities").client
    doc = {"image": png(40, 32, seed=1)}
    r = client.post("/api/v1/rerank", json={"query": QUERY, "documents": [_wire(doc)]})
    assert r.status_code == 200, r.text
    raw = vl_reference.logit(QUERY, doc, instruction="Find maps of cities")[0]
    assert r.json()["results"][0]["relevance_score"] == pytest.approx(1 / (1 + math.exp(-raw)), abs=1e-4)


def test_the_score_cache_keys_the_image_bytes(vl_serve: Any, vl_reference: VLReference):
    client = vl_serve(cache_mb=8).client
    first = {"image": png(40, 32, seed=30), "text": "same caption"}
    other = {"image": png(40, 32, seed=31), "text": "same caption"}
    r1 = client.post("/api/v1/rerank", json={"query": QUERY, "documents": [_wire(first)]})
    r2 = client.post("/api/v1/rerank", json={"query": QUERY, "documents": [_wire(first)]})
    r3 = client.post("/api/v1/rerank", json={"query": QUERY, "documents": [_wire(other)]})
    assert r1.status_code == r2.status_code == r3.status_code == 200
    assert int(r1.headers["X-Compute-Tokens"]) > 0
    assert r2.headers["X-Compute-Tokens"] == "0"  # the same image bytes: a hit
    assert r2.json()["results"][0]["relevance_score"] == r1.json()["results"][0]["relevance_score"]
    # another image with the same text is another pair: computed, with its own score
    assert int(r3.headers["X-Compute-Tokens"]) > 0
    assert r3.json()["results"][0]["relevance_score"] == pytest.approx(vl_reference.scores(QUERY, [other])[0],
                                                                       abs=1e-4)


# -- images that are refused ---------------------------------------------------------------------
def _truncated_png() -> bytes:
    data = png(64, 64, seed=5)
    return data[: len(data) // 2]


@pytest.mark.parametrize(("image", "status", "words"), [
    ("not base64 at all!", 422, "base64"),
    (b64(_truncated_png()), 422, "truncated"),
    (b64(png_header(20_000, 20_000)), 413, "RERANKER_IMAGE_MAX_PIXELS"),
    (b64(b"GIF89a-but-not-really"), 422, "not a readable"),
    ("data:image/png,rawbytes", 422, "base64"),
])
def test_hostile_images_are_refused_cleanly(vl: httpx.Client, image: str, status: int, words: str):
    r = vl.post("/api/v1/rerank", json={"query": QUERY, "documents": ["text", {"image": image}]})
    assert r.status_code == status, r.text
    assert words in r.json()["detail"] and "documents[1]" in r.json()["detail"]
    # the server is still healthy and still scores
    assert vl.get("/health").status_code == 200
    ok = vl.post("/api/v1/rerank", json={"query": QUERY, "documents": [{"image": b64(png(seed=1))}]})
    assert ok.status_code == 200, ok.text


def test_the_pixel_limit_is_read_from_the_header(vl_serve: Any):
    client = vl_serve(image_max_pixels=1000).client
    r = client.post("/api/v1/rerank", json={"query": QUERY, "documents": [{"image": b64(png(40, 30))}]})
    assert r.status_code == 413 and "40 x 30 = 1200 pixels" in r.json()["detail"], r.text
    assert client.post("/api/v1/rerank", json={"query": QUERY, "documents": [
        {"image": b64(png(20, 20))}]}).status_code == 200


def test_image_count_and_byte_limits(vl_serve: Any):
    client = vl_serve(max_images=2, image_max_bytes=4096).client
    three = [{"image": b64(png(seed=i))} for i in range(3)]
    r = client.post("/api/v1/rerank", json={"query": QUERY, "documents": three})
    assert r.status_code == 413 and "RERANKER_MAX_IMAGES" in r.json()["detail"], r.text
    big = png(64, 64, seed=9)  # random pixels: ~12 kB
    assert len(big) > 4096
    r = client.post("/api/v1/rerank", json={"query": QUERY, "documents": [{"image": b64(big)}]})
    assert r.status_code == 413 and "RERANKER_IMAGE_MAX_BYTES" in r.json()["detail"], r.text
    assert client.post("/api/v1/rerank", json={"query": QUERY, "documents": three[:2]}).status_code == 200


def test_a_text_only_model_refuses_images(client: httpx.Client):
    r = client.post("/api/v1/rerank", json={"query": QUERY, "documents": ["text", {"image": b64(png())}]})
    assert r.status_code == 422 and "ranks text only" in r.json()["detail"], r.text
    assert client.post("/api/v1/rerank", json={"query": QUERY, "documents": ["text"]}).status_code == 200


# -- image URLs ----------------------------------------------------------------------------------
class _Images(http.server.BaseHTTPRequestHandler):
    routes: dict[str, tuple[int, dict[str, str], bytes]] = {}

    stall = threading.Event()  # set at the end: the stalled route then answers

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        if self.path == "/stalled.png":
            self.stall.wait(30)
        status, headers, body = self.routes.get(self.path, (404, {}, b""))
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def image_host() -> Iterator[str]:
    _Images.routes = {
        "/page.png": (200, {"Content-Type": "image/png"}, png(40, 32, seed=11)),
        "/big.png": (200, {"Content-Type": "image/png"}, png(64, 64, seed=12)),
        "/moved.png": (302, {"Location": "http://169.254.169.254/latest/meta-data"}, b""),
    }
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Images)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    _Images.stall.set()
    server.shutdown()


def test_image_urls_are_refused_unless_the_host_is_allowed(vl: httpx.Client, image_host: str):
    r = vl.post("/api/v1/rerank", json={"query": QUERY, "documents": [{"image": f"{image_host}/page.png"}]})
    assert r.status_code == 422 and "RERANKER_IMAGE_URL_ALLOWLIST" in r.json()["detail"], r.text


def test_allowed_image_urls_are_fetched_within_limits(vl_serve: Any, image_host: str, vl_reference: VLReference):
    client = vl_serve(image_url_allowlist="127.0.0.1", image_max_bytes=4096).client
    r = client.post("/api/v1/rerank", json={"query": QUERY, "documents": [{"image": f"{image_host}/page.png"}]})
    assert r.status_code == 200, r.text
    [result] = r.json()["results"]
    assert result["document"] == {"image": f"{image_host}/page.png"}
    expected = vl_reference.scores(QUERY, [{"image": png(40, 32, seed=11)}])[0]
    assert result["relevance_score"] == pytest.approx(expected, abs=1e-4)
    r = client.post("/api/v1/rerank", json={"query": QUERY, "documents": [{"image": f"{image_host}/big.png"}]})
    assert r.status_code == 413 and "RERANKER_IMAGE_MAX_BYTES" in r.json()["detail"], r.text
    r = client.post("/api/v1/rerank", json={"query": QUERY, "documents": [{"image": f"{image_host}/moved.png"}]})
    assert r.status_code == 422 and "302" in r.json()["detail"], r.text
    other = client.post("/api/v1/rerank", json={"query": QUERY, "documents": [{"image": "http://localhost:9/x.png"}]})
    assert other.status_code == 422 and "'localhost'" in other.json()["detail"], other.text


# -- jina-reranker-m0 ------------------------------------------------------------------------------
class M0Reference:
    """jina-reranker-m0's compute_score (its modeling.py), computed directly: the document-first
    prompt, the processor's image patches (3136..602112 pixels), the score token appended, the
    score head over the last position's hidden state, sigmoid(raw - 2.65)."""

    def __init__(self, model_dir: Path) -> None:
        import torch
        from safetensors.torch import load_file
        from transformers import AutoImageProcessor, AutoTokenizer, Qwen2VLForConditionalGeneration

        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.images = AutoImageProcessor.from_pretrained(model_dir)
        self.model = Qwen2VLForConditionalGeneration.from_pretrained(
            model_dir, dtype=torch.float32,
            key_mapping={r"^visual": "model.visual", r"^model(?!\.(language_model|visual))": "model.language_model"},
        ).eval()
        weights = load_file(str(model_dir / "model.safetensors"))
        hidden = weights["score.0.weight"].shape[0]
        self.score = torch.nn.Sequential(torch.nn.Linear(hidden, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 1))
        self.score.load_state_dict({k.removeprefix("score."): v for k, v in weights.items() if k.startswith("score.")})

    def logit(self, query: Any, doc: Any) -> float:
        import io

        from PIL import Image

        def part(item: Any) -> tuple[str, list[bytes]]:
            if isinstance(item, str):
                return item, []
            return "<|vision_start|><|image_pad|><|vision_end|>", [item["image"]]

        d, d_images = part(doc)
        q, q_images = part(query)
        text = f"**Document**:\n{d}\n**Query**:\n{q}"
        pictures = [Image.open(io.BytesIO(x)).convert("RGB") for x in d_images + q_images]
        extra: dict[str, Any] = {}
        if pictures:
            out = self.images(images=pictures, return_tensors="pt",
                              size={"shortest_edge": 3136, "longest_edge": 602112})
            grids = out["image_grid_thw"]
            parts = text.split("<|image_pad|>")
            text = parts[0] + "".join("<|image_pad|>" * (int(g.prod()) // 4) + rest for g, rest in zip(grids, parts[1:]))
            extra = {"pixel_values": out["pixel_values"], "image_grid_thw": grids}
        ids = self.tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        ids = self.torch.cat([ids, self.torch.tensor([[100]])], dim=1)  # m0's score token
        with self.torch.inference_mode():
            hidden = self.model.model(input_ids=ids, attention_mask=self.torch.ones_like(ids), use_cache=False,
                                      mm_token_type_ids=(ids == self.model.config.image_token_id).int(),
                                      **extra).last_hidden_state[0, -1]
            return float(self.score(hidden)[0])

    def scores(self, query: Any, docs: list[Any]) -> list[float]:
        return [1 / (1 + math.exp(-(self.logit(query, d) - 2.65))) for d in docs]


@pytest.fixture(scope="module")
def m0(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[httpx.Client, M0Reference]]:
    folder = build_jina_m0(tmp_path_factory.mktemp("m0") / "jina-reranker-m0-tiny")
    server = RunningServer(create_app(settings_for(folder, max_length=1024, warmup_seconds=0)))
    yield server.client, M0Reference(folder)
    server.stop()


def test_jina_m0_scores_images_and_text_as_its_modeling_code(m0: tuple[httpx.Client, M0Reference]):
    client, reference = m0
    docs: list[Any] = ["Paris is the capital of France.", {"image": png(60, 45, seed=41)},
                       {"image": jpeg(30, 90, seed=42)}, "The cat sat on the mat."]
    for query in (QUERY, {"image": png(50, 50, seed=43)}):
        r = client.post("/api/v1/rerank", json={"query": _wire(query), "documents": [_wire(d) for d in docs]})
        assert r.status_code == 200, r.text
        expected = reference.scores(query, docs)
        for result in r.json()["results"]:
            assert result["relevance_score"] == pytest.approx(expected[result["index"]], abs=1e-4)
    info = client.get("/info").json()
    assert "jina-m0" in str(info)
    # m0 has no instruction to change
    r = client.post("/api/v1/rerank", json={"query": QUERY, "documents": ["x"], "instruction": "Find maps"})
    assert r.status_code == 422 and "takes no instruction" in r.json()["detail"], r.text


def test_an_image_url_that_does_not_deliver_times_out(vl_serve: Any, image_host: str):
    client = vl_serve(image_url_allowlist="127.0.0.1", image_fetch_timeout=0.2).client
    r = client.post("/api/v1/rerank", json={"query": QUERY, "documents": [{"image": f"{image_host}/stalled.png"}]})
    assert r.status_code == 422 and "RERANKER_IMAGE_FETCH_TIMEOUT" in r.json()["detail"], r.text
    assert client.get("/health").status_code == 200


# -- detection -----------------------------------------------------------------------------------
def test_families_are_detected_from_the_config():
    from reranker_serve.families import UnknownModel, detect

    vl_config = {"architectures": ["Qwen3VLForConditionalGeneration"], "model_type": "qwen3_vl"}
    assert detect(vl_config, source="Qwen/Qwen3-VL-Reranker-2B").name == "qwen3-vl"
    with pytest.raises(UnknownModel, match="Qwen3-VL-Reranker"):
        detect(vl_config, source="Qwen/Qwen3-VL-2B-Instruct")  # a chat model is no reranker
    assert detect({"architectures": ["JinaVLForRanking"], "model_type": "qwen2_vl"}).name == "jina-m0"


# -- vLLM's content parts --------------------------------------------------------------------------
def _image_part(data: bytes) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": data_url(data)}}


def test_vllm_content_parts_on_its_rerank_routes(vl: httpx.Client, vl_reference: VLReference):
    a, b = png(40, 32, seed=51), jpeg(64, 40, seed=52)
    docs = ["Paris is the capital of France.", {"content": [_image_part(a)]},
            {"content": [{"type": "text", "text": "a map of Paris"}, _image_part(b)]}]
    expected = vl_reference.scores(QUERY, ["Paris is the capital of France.", {"image": a},
                                           {"image": b, "text": "a map of Paris"}])
    for route in ("/rerank", "/v1/rerank", "/v2/rerank"):
        r = vl.post(route, json={"query": QUERY, "documents": docs, "return_documents": True})
        assert r.status_code == 200, (route, r.text)
        for result in r.json()["results"]:
            assert result["relevance_score"] == pytest.approx(expected[result["index"]], abs=1e-4), route
    # vLLM's document echo on its native route: {text?, multi_modal: part}
    r = vl.post("/rerank", json={"query": QUERY, "documents": docs, "return_documents": True})
    echoed = {x["index"]: x["document"] for x in r.json()["results"]}
    assert echoed[1] == {"multi_modal": _image_part(a)}
    assert echoed[2] == {"text": "a map of Paris", "multi_modal": _image_part(b)}
    # one {"content": [...]} for all documents: each part is a document (vLLM's 1:N scoring)
    r = vl.post("/rerank", json={"query": {"content": [{"type": "text", "text": QUERY}]},
                                 "documents": {"content": [_image_part(a), _image_part(b)]}})
    assert r.status_code == 200, r.text
    both = vl_reference.scores(QUERY, [{"image": a}, {"image": b}])
    assert {x["index"]: pytest.approx(both[x["index"]], abs=1e-4) for x in r.json()["results"]} == {
        x["index"]: x["relevance_score"] for x in r.json()["results"]}


def test_vllm_parts_that_are_not_served_are_refused(vl: httpx.Client):
    video = {"content": [{"type": "video_url", "video_url": {"url": "http://x/v.mp4"}}]}
    r = vl.post("/rerank", json={"query": QUERY, "documents": ["x", video]})
    assert r.status_code == 422 and "documents[1].content[0]" in r.json()["error"] and "video_url" in r.json()["error"]
    two = {"content": [_image_part(png(seed=1)), _image_part(png(seed=2))]}
    r = vl.post("/v1/rerank", json={"query": QUERY, "documents": [two]})
    assert r.status_code == 400 and "at most one image" in r.json()["message"], r.text
    r = vl.post("/v1/rerank", json={"query": QUERY, "documents": [{"content": [{"type": "image_url"}]}]})
    assert r.status_code == 400 and "documents[0].content[0]" in r.json()["message"], r.text


def test_metrics_count_image_documents_and_their_tokens(vl_serve: Any):
    from prometheus_client.parser import text_string_to_metric_families

    client = vl_serve(served_model_name="vl-metrics").client  # a server of its own: counts start at zero
    docs = [{"image": b64(png(seed=61))}, {"image": b64(png(80, 80, seed=62))}, "text"]
    r = client.post("/api/v1/rerank", json={"query": QUERY, "documents": docs})
    assert r.status_code == 200, r.text
    values = {(s.name, tuple(sorted(s.labels.items()))): s.value
              for family in text_string_to_metric_families(client.get("/metrics").text) for s in family.samples}
    model = (("model", "vl-metrics"),)
    assert values[("reranker_documents_total", model)] == 3
    assert values[("reranker_tokens_total", model)] == r.json()["usage"]["total_tokens"]  # image patches counted
