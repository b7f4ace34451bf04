"""The model interface is explicit: what the engine and the API read of a model is declared in
``ScoringModel``, read without ``getattr`` defaults (a typo would fall back silently), and every
model class has it."""

from __future__ import annotations

import ast
from pathlib import Path

import torch
from llm_models import build_qwen3
from vision_models import build_jina_m0, build_qwen3_vl

from reranker_serve.config import Settings
from reranker_serve.device import Placement
from reranker_serve.models import EncodeOptions, ScoringModel, load_model

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "reranker_serve"
# The modules that hold a model and read it: the engine, the system routes, the service.
READERS = ["engine.py", "api/system.py", "service.py"]
MEMBERS = set(ScoringModel.__annotations__) | {n for n in vars(ScoringModel) if not n.startswith("_")}


def _is_model(node: ast.AST) -> bool:
    """``model``, ``self.model`` or ``engine.model``: an expression that names a model."""
    return (isinstance(node, ast.Name) and node.id == "model") or (isinstance(node, ast.Attribute) and node.attr == "model")


def test_the_protocol_declares_what_the_engine_and_info_read():
    assert {"launch", "padded", "asynchronous", "attention", "attention_note"} <= MEMBERS
    defaults, undeclared = [], []
    for name in READERS:
        for node in ast.walk(ast.parse((PACKAGE / name).read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "getattr"
                    and node.args and _is_model(node.args[0])):
                defaults.append(f"{name}:{node.lineno}")
            if isinstance(node, ast.Attribute) and _is_model(node.value) and node.attr not in MEMBERS:
                undeclared.append(f"{name}:{node.lineno} .{node.attr}")
    assert not defaults, f"getattr(model, ...) reads: {defaults}"
    assert not undeclared, f"model attributes not in ScoringModel: {undeclared}"


def _members_of(model: object) -> dict[str, object]:
    return {name: getattr(model, name) for name in MEMBERS}  # AttributeError: a member is missing


def test_every_loaded_model_class_has_the_whole_protocol(tiny_model, tmp_path):
    encoder = load_model(Settings(_env_file=None, model_path=tiny_model, backend="torch").model_specs[0],
                         Placement("cpu", torch.float32))
    causal = load_model(Settings(_env_file=None, model_path=build_qwen3(tmp_path / "qwen3")).model_specs[0],
                        Placement("cpu", torch.float32))
    for model, family in ((encoder, "encoder"), (causal, "qwen3")):
        members = _members_of(model)
        assert model.family == family
        assert (members["attention"], members["padded"], members["asynchronous"]) == ("padded", True, False)
        assert callable(members["launch"])
        pairs = model.encode("q", ["a document", "another one"], EncodeOptions(max_length=model.max_length))
        assert model.launch(pairs).result() == model.forward(pairs)


def test_the_vision_models_have_the_whole_protocol(tmp_path):
    # /info reads every member (it answered 500 on jina-m0 when `quantization` came to the protocol).
    for build, family in ((build_qwen3_vl, "qwen3-vl"), (build_jina_m0, "jina-m0")):
        folder = build(tmp_path / f"{family}-reranker-tiny" if family == "jina-m0" else tmp_path / "Qwen3-VL-Reranker-tiny")
        model = load_model(Settings(_env_file=None, model_path=folder).model_specs[0], Placement("cpu", torch.float32))
        members = _members_of(model)
        assert model.family == family
        assert (members["attention"], members["padded"], members["asynchronous"], members["launch"]) == \
            ("padded", True, False, None)
        assert members["quantization"] is None
        pairs = model.encode("q", ["a document", "another one"], EncodeOptions(max_length=model.max_length))
        assert len(model.forward(pairs)) == 2
