"""Fixtures: a tiny random-weight cross-encoder built on the spot, and real servers on loopback.

No test downloads anything: the tokenizer is trained here (a small BPE with XLM-RoBERTa's
special tokens and pair template) and the model is an XLMRobertaForSequenceClassification of a
few hundred kB with random weights. Servers are real uvicorn servers in a thread, so requests
go over HTTP with the app's lifespan, middleware and error handling, as in production.
"""

from __future__ import annotations

import math
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

import httpx
import pytest
import uvicorn

from reranker_serve.app import create_app
from reranker_serve.config import Settings
from reranker_serve.protocol import uvicorn_options
from procs import free_port

CORPUS = [
    "The cat sat on the mat and looked at the dog.",
    "Paris is the capital and most populous city of France.",
    "Berlin is the capital of Germany; Madrid is the capital of Spain.",
    "Deep learning is a subset of machine learning based on neural networks.",
    "A reranker scores each query and document pair with a cross-encoder.",
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "Photosynthesis converts light energy into chemical energy in plants.",
    "Rust and Python are programming languages with different trade-offs.",
    "The stock market fell sharply after the central bank raised interest rates.",
    "Mount Everest is the highest mountain above sea level on Earth.",
] * 20

QUERY = "What is the capital of France?"
DOCS = [
    "Paris is the capital of France.",
    "Berlin is the capital of Germany.",
    "The cat sat on the mat.",
    "Deep learning uses neural networks.",
    "Madrid is the capital of Spain.",
]


def build_tiny_model(out: Path, *, max_positions: int = 130, seed: int = 0, hidden_size: int = 32,
                     initializer_range: float = 0.5) -> Path:
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers, decoders
    from transformers import PreTrainedTokenizerFast, XLMRobertaConfig, XLMRobertaForSequenceClassification

    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=400, special_tokens=specials, show_progress=False))
    tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", sep_token="</s>", cls_token="<s>",
        unk_token="<unk>", pad_token="<pad>", mask_token="<mask>", model_max_length=max_positions - 2,
    )
    fast.model_input_names = ["input_ids", "attention_mask"]
    torch.manual_seed(seed)
    config = XLMRobertaConfig(
        vocab_size=tok.get_vocab_size(), hidden_size=hidden_size, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=2 * hidden_size, max_position_embeddings=max_positions, type_vocab_size=1, pad_token_id=1,
        bos_token_id=0, eos_token_id=2, num_labels=1, initializer_range=initializer_range,
    )
    config.architectures = ["XLMRobertaForSequenceClassification"]
    model = XLMRobertaForSequenceClassification(config).eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    fast.save_pretrained(out)
    return out


def build_hub_cache(cache: Path, models: dict[str, Callable[[Path], Path]]) -> Path:
    """A Hugging Face cache, in the layout huggingface_hub writes, holding ``models`` (hub id ->
    builder of a tiny stand-in) as if they had been downloaded."""
    revision = "0" * 40
    for repo, build in models.items():
        folder = cache / f"models--{repo.replace('/', '--')}"
        build(folder / "snapshots" / revision)
        (folder / "refs").mkdir(parents=True, exist_ok=True)
        (folder / "refs" / "main").write_text(revision)
    return cache


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-reranker")


class Reference:
    """Scores computed independently of the service: transformers, fp32, the tokenizer's own
    pair encoding, sigmoid — what FlagEmbedding's compute_score(normalize=True) does."""

    def __init__(self, model_dir: Path) -> None:
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModelForSequenceClassification.from_pretrained(model_dir, dtype=torch.float32).eval()

    def logits(self, query: str, docs: list[str], *, max_length: int = 128, side: str = "right") -> list[float]:
        out = []
        self.tokenizer.truncation_side = side
        with self.torch.inference_mode():
            for doc in docs:  # one at a time: no padding, nothing shared with the batched path
                enc = self.tokenizer(query, doc, truncation="only_second", max_length=max_length, return_tensors="pt")
                out.append(float(self.model(**enc).logits[0, 0]))
        return out

    def scores(self, query: str, docs: list[str], **kw: int) -> list[float]:
        return [1 / (1 + math.exp(-x)) for x in self.logits(query, docs, **kw)]

    def ranking(self, query: str, docs: list[str]) -> list[int]:
        scores = self.scores(query, docs)
        return sorted(range(len(docs)), key=lambda i: -scores[i])


@pytest.fixture(scope="session")
def reference(tiny_model: Path) -> Reference:
    return Reference(tiny_model)


class RunningServer:
    def __init__(self, app, *, wait_ready: bool = True) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # The connection limits of production (protocol.py), from the app's own settings.
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on",
                                **uvicorn_options(app.state.settings))
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 120
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("test server did not start")
            time.sleep(0.02)
        self.client = httpx.Client(base_url=self.url, timeout=60)
        if wait_ready:
            self.wait_ready()

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while self.client.get("/ready").status_code != 200:
            if time.monotonic() > deadline:
                raise RuntimeError(f"server not ready: {self.client.get('/ready').text}")
            time.sleep(0.05)

    def wait_failed(self, timeout: float = 60) -> str:
        """Wait for the model load to fail; return the error /ready reports."""
        deadline = time.monotonic() + timeout
        while (r := self.client.get("/ready")).json()["status"] == "loading":
            if time.monotonic() > deadline:
                raise RuntimeError("the model is still loading")
            time.sleep(0.05)
        assert r.status_code == 503 and r.json()["status"] == "failed", r.text
        return r.json()["error"]

    def stop(self) -> None:
        self.client.close()
        self.server.should_exit = True
        self.thread.join(timeout=30)


def load_error(settings: Settings) -> str:
    """Start a server whose model is expected not to load; return the error /ready reports."""
    srv = RunningServer(create_app(settings), wait_ready=False)
    try:
        return srv.wait_failed()
    finally:
        srv.stop()


def settings_for(model_dir: Path, **overrides: object) -> Settings:
    """Settings for tests: the tiny model, fp32 (scores are compared with an fp32 reference),
    no score cache, and no .env from the working directory."""
    values: dict[str, object] = dict(model_path=model_dir, dtype="float32", device="cpu", max_length=128)
    # The score cache off unless a test asks for it (test_cache.py): the other tests send the same
    # pairs again and again and check what computing them reports (tokens, queueing, timing).
    values["cache_mb"] = 0
    # Wrong keys unthrottled unless a test asks (test_security.py): shared servers get many from 127.0.0.1.
    values["auth_failures_per_minute"] = 0
    values.update(overrides)
    return Settings(_env_file=None, **values)


@pytest.fixture(scope="session")
def serve(tiny_model: Path) -> Iterator[Callable[..., RunningServer]]:
    """serve(**settings) -> a running server for those settings (one per distinct settings)."""
    servers: dict[tuple, RunningServer] = {}

    def start(**overrides: object) -> RunningServer:
        key = tuple(sorted((k, repr(v)) for k, v in overrides.items()))
        if key not in servers:
            servers[key] = RunningServer(create_app(settings_for(tiny_model, **overrides)))
        return servers[key]

    yield start
    for server in servers.values():
        server.stop()


# The names real clients send by default, served as aliases of the tiny model by the shared server.
CLIENT_ALIASES = ("rerank-english-v3.0", "rerank-v3.5", "jina-reranker-v2-base-multilingual")


@pytest.fixture(scope="session")
def server(serve: Callable[..., RunningServer], tiny_model: Path) -> RunningServer:
    return serve(models=",".join(f"{name}={tiny_model}" for name in ("tiny-reranker", *CLIENT_ALIASES)))


@pytest.fixture()
def client(server: RunningServer) -> httpx.Client:
    return server.client
