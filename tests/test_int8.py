"""int8 for cross-encoders on OpenVINO (RERANKER_QUANTIZE, models/quantize.py): quantized with NNCF,
proven at start-up against torch float32, cached on disk, chosen per machine.

Two tiny models: one int8 represents well (XLM-R, hidden 32, weights N(0, 0.2)), and the same
model with an outlier int8 cannot represent: one hidden channel is made dead (every LayerNorm's
weight and bias zero there, so the channel is exactly 0 in float32) and every Linear reading the
hidden state gets weight 1000 in that column. Float32 is unchanged by it (0 x 1000 = 0); int8
quantizes each weight row on a scale spanning 1000, which rounds the row's real weights (~0.2)
to nothing: both NNCF methods fail the self-check for real.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import RunningServer, build_tiny_model, settings_for
from netguard import network_guard
from reranker_serve import device as cpu_capability
from reranker_serve.app import create_app
from reranker_serve.bootstrap import start_up_settings
from reranker_serve.config import ConfigError, Settings, load_settings
from reranker_serve.device import Placement
from reranker_serve.errors import ModelLoadError
from reranker_serve.models import EncodeOptions, load_model
from reranker_serve.models import quantize as q
from reranker_serve.models.base import sigmoid
from reranker_serve.models.quantize_texts import CHECK_TOPICS

QUERY = "What is the capital of France?"
DOCS = ["Paris is the capital of France.", "Berlin is the capital of Germany.", "The cat sat on the mat.",
        "Deep learning uses neural networks.", "Madrid is the capital of Spain."]


@pytest.fixture(scope="module")
def int8_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("int8") / "tiny-int8", initializer_range=0.2)


@pytest.fixture(scope="module")
def outlier_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import AutoModelForSequenceClassification

    folder = build_tiny_model(tmp_path_factory.mktemp("int8") / "tiny-outlier", initializer_range=0.2)
    model = AutoModelForSequenceClassification.from_pretrained(folder)
    dead = 0
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight[dead] = 0.0
                module.bias[dead] = 0.0
            # Every Linear fed the hidden state (the score head's last one reads tanh(...), not it).
            elif isinstance(module, torch.nn.Linear) and module.in_features == model.config.hidden_size \
                    and not name.endswith("out_proj"):
                module.weight[:, dead] = 1000.0
    model.save_pretrained(folder)
    return folder


def spec(folder: Path, cache: Path, **options: object):
    return Settings(_env_file=None, model_path=folder, max_length=128, model_cache_dir=cache, **options).model_specs[0]


def float32_logits(folder: Path, topics) -> list[list[float]]:
    """Torch float32 logits, computed apart from the service (transformers and its tokenizer)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder, dtype=torch.float32).eval()
    out = []
    with torch.no_grad():
        for query, docs in topics:
            batch = tokenizer([query] * len(docs), list(docs), padding=True, truncation=True, max_length=128,
                              return_tensors="pt")
            out.append(model(**batch).logits[:, 0].tolist())
    return out


@pytest.fixture()
def no_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    """A CPU without bf16 hardware (this machine has AMX): the probe resolve_dtype and the int8 plan read."""
    monkeypatch.setattr(cpu_capability, "cpu_has_fast_bf16", lambda: False)


@pytest.fixture()
def quantizations(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Each NNCF quantization run (the method), counted; the quantization itself is the real one."""
    calls: list[str] = []
    real = q._quantize

    def counted(converted, method, samples):
        calls.append(method)
        return real(converted, method, samples)

    monkeypatch.setattr(q, "_quantize", counted)
    return calls


def test_int8_serves_over_http_agrees_with_float32_and_info_carries_the_check(int8_model, tmp_path, no_bf16):
    srv = RunningServer(create_app(settings_for(int8_model, dtype="auto", model_cache_dir=tmp_path, cache_mb=0)))
    try:
        info = srv.client.get("/info").json()["models"][0]
        assert (info["backend"], info["dtype"]) == ("openvino", "int8")
        quantization = info["quantization"]
        assert quantization["mode"] == "int8-static" and "auto: no bf16 hardware" in quantization["reason"]
        check = quantization["checks"]["static"]
        assert check["passed"] and check["source"] == "quantized" and check["pairs"] == 48 and check["queries"] == 6
        # The numbers /info gives are those of the check set, recomputed here: float32 apart from the
        # service, int8 over HTTP.
        reference = float32_logits(int8_model, CHECK_TOPICS)
        served = []
        for query, docs in CHECK_TOPICS:
            reply = srv.client.post("/rerank", json={"query": query, "documents": list(docs), "raw_scores": True})
            assert reply.status_code == 200
            got = {r["index"]: r["relevance_score"] for r in reply.json()["results"]}
            served.append([got[i] for i in range(len(docs))])
        measured = q.agreement(reference, served)
        assert check["max_score_delta"] == pytest.approx(measured.max_score_delta, abs=2e-3)
        assert check["min_spearman"] == pytest.approx(measured.min_spearman, abs=0.1)
        assert not measured.failures(), measured  # within the documented bounds over HTTP too
        assert 0 < measured.max_score_delta <= q.BOUNDS.max_score_delta  # quantized: not float32's own scores
        assert quantization["bounds"]["max_score_delta"] == q.BOUNDS.max_score_delta
        # And on text it was neither calibrated nor checked on.
        reply = srv.client.post("/rerank", json={"query": QUERY, "documents": DOCS}).json()
        want = [sigmoid(x) for x in float32_logits(int8_model, [(QUERY, DOCS)])[0]]
        for r in reply["results"]:
            assert r["relevance_score"] == pytest.approx(want[r["index"]], abs=q.BOUNDS.max_score_delta)
    finally:
        srv.stop()


def test_a_restart_reads_the_cached_model_and_a_damaged_entry_is_rebuilt(int8_model, tmp_path, quantizations):
    options = dict(quantize="int8")
    first = load_model(spec(int8_model, tmp_path, **options), Placement("cpu", torch.float32))
    assert first.quantization["mode"] == "int8-static" and quantizations == ["static"]
    (entry,) = (tmp_path / "int8").iterdir()
    assert {p.name for p in entry.iterdir()} >= {"model.xml", "model.bin", "manifest.json"}
    second = load_model(spec(int8_model, tmp_path, **options), Placement("cpu", torch.float32))
    assert quantizations == ["static"]  # not quantized again
    assert second.quantization["checks"]["static"]["source"] == "cache"
    assert second.quantization["checks"]["static"]["passed"]  # checked again, like a fresh one
    pairs = first.encode(QUERY, DOCS, EncodeOptions(max_length=128))
    assert second.forward(pairs) == pytest.approx(first.forward(pairs), abs=1e-6)
    # A truncated weights file: never served, quantized again and checked.
    weights = entry / "model.bin"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    third = load_model(spec(int8_model, tmp_path, **options), Placement("cpu", torch.float32))
    assert quantizations == ["static", "static"]
    assert third.quantization["checks"]["static"]["source"] == "quantized"
    assert third.forward(pairs) == pytest.approx(first.forward(pairs), abs=1e-6)
    # Another calibration set is another entry (the key holds the calibration inputs' digest). Five
    # pairs of one topic are a poor calibration: static int8 fails its check for real, and the
    # weight-only method (no calibration) serves instead.
    calibration = tmp_path / "pairs.jsonl"
    calibration.write_text("\n".join(json.dumps({"query": QUERY, "document": d}) for d in DOCS) + "\n")
    fourth = load_model(spec(int8_model, tmp_path, quantize_calibration=calibration, **options),
                        Placement("cpu", torch.float32))
    assert quantizations == ["static", "static", "static", "weights"]
    assert fourth.quantization["calibration"].startswith(str(calibration))
    assert fourth.quantization["mode"] == "int8-weights" and not fourth.quantization["checks"]["static"]["passed"]
    assert len(list((tmp_path / "int8").iterdir())) == 3  # static twice (two calibrations), weights once


def test_auto_is_bf16_with_bf16_hardware_int8_without_and_float32_when_int8_fails(int8_model, outlier_model,
                                                                                  tmp_path, monkeypatch):
    # With bf16 hardware: bf16, as before int8 existed (no quantization tried).
    monkeypatch.setattr(cpu_capability, "cpu_has_fast_bf16", lambda: True)
    placement = cpu_capability.resolve_placement(device="cpu", dtype="auto", use_fp16=True)
    model = load_model(spec(int8_model, tmp_path), placement)
    assert (model.backend, model.dtype_name, model.quantization["mode"]) == ("openvino", "bfloat16", "off")
    assert "bf16 hardware" in model.quantization["reason"] and not (tmp_path / "int8").exists()
    # Without: int8, where it passes its self-check.
    monkeypatch.setattr(cpu_capability, "cpu_has_fast_bf16", lambda: False)
    placement = cpu_capability.resolve_placement(device="cpu", dtype="auto", use_fp16=True)
    assert placement.dtype == torch.float32
    model = load_model(spec(int8_model, tmp_path), placement)
    assert (model.dtype_name, model.quantization["mode"]) == ("int8", "int8-static")
    # Without, and int8 fails: float32, and /info's note says why, with the numbers.
    model = load_model(spec(outlier_model, tmp_path), placement)
    assert (model.backend, model.dtype_name, model.quantization["mode"]) == ("openvino", "float32", "off")
    checks = model.quantization["checks"]
    assert set(checks) == {"static", "weights"} and not any(c["passed"] for c in checks.values())
    assert all(c["max_score_delta"] > q.BOUNDS.max_score_delta for c in checks.values())
    assert "failed its start-up self-check" in model.quantization["reason"]
    assert "serving float32" in model.quantization["reason"]
    reference = float32_logits(outlier_model, [(QUERY, DOCS)])[0]
    assert model.forward(model.encode(QUERY, DOCS, EncodeOptions(max_length=128))) == pytest.approx(reference, abs=1e-4)
    # RERANKER_DTYPE=float32 is exact: never quantized, whatever the CPU.
    model = load_model(spec(int8_model, tmp_path, dtype="float32"), placement)
    assert (model.dtype_name, model.quantization["mode"]) == ("float32", "off")


def test_a_model_int8_cannot_represent_falls_back_and_says_why_over_http(outlier_model, tmp_path, no_bf16):
    srv = RunningServer(create_app(settings_for(outlier_model, dtype="auto", model_cache_dir=tmp_path)))
    try:
        info = srv.client.get("/info").json()["models"][0]
        assert (info["dtype"], info["quantization"]["mode"]) == ("float32", "off")
        assert "max |Δ score|" in info["quantization"]["reason"]
        reply = srv.client.post("/rerank", json={"query": QUERY, "documents": DOCS, "raw_scores": True}).json()
        want = float32_logits(outlier_model, [(QUERY, DOCS)])[0]
        for r in reply["results"]:
            assert r["relevance_score"] == pytest.approx(want[r["index"]], abs=1e-4)
    finally:
        srv.stop()


def test_explicit_int8_that_fails_its_check_stops_the_start(outlier_model, tmp_path):
    # As RERANKER_BACKEND=openvino that disagrees with torch: asked for, not delivered, not started.
    with pytest.raises(ModelLoadError, match=r"RERANKER_QUANTIZE=int8: .*failed its start-up self-check.*"
                                             r"RERANKER_QUANTIZE_CALIBRATION"):
        load_model(spec(outlier_model, tmp_path, quantize="int8"), Placement("cpu", torch.float32))


def test_explicit_int8_refuses_what_it_cannot_quantize(int8_model, tmp_path):
    with pytest.raises(ModelLoadError, match="RERANKER_QUANTIZE=int8 quantizes cross-encoders served by OpenVINO"):
        load_model(spec(int8_model, tmp_path, quantize="int8", backend="torch"), Placement("cpu", torch.float32))


def test_the_plan_follows_the_machine_and_the_settings():
    def plan(setting="auto", dtype_setting="auto", dtype=torch.float32, bf16=False, nncf=True, openvino=True):
        return q.plan_quantization(setting, dtype_setting=dtype_setting, dtype=dtype, device="cpu", openvino=openvino,
                                   bf16_hardware=lambda: bf16, nncf=lambda: nncf)

    assert plan().methods == ("static", "weights") and not plan().required
    assert plan(bf16=True, dtype=torch.bfloat16).methods == ()
    assert plan(dtype_setting="float32").methods == () and "exact" in plan(dtype_setting="float32").why
    assert plan(setting="off").methods == ()
    assert "NNCF is not installed" in plan(nncf=False).why and plan(nncf=False).methods == ()
    assert plan(setting="int8", bf16=True, dtype=torch.bfloat16).required
    with pytest.raises(ModelLoadError, match="needs NNCF"):
        plan(setting="int8", nncf=False)
    with pytest.raises(ModelLoadError, match="served by OpenVINO"):
        plan(setting="int8", openvino=False)


def test_settings_validate_the_calibration_file_and_refuse_int8_with_exact_float32(tmp_path):
    good = tmp_path / "good.jsonl"
    good.write_text('{"query": "q", "document": "d"}\n\n{"query": "q", "documents": ["e", "f"]}\n')
    assert load_settings(_env_file=None, quantize_calibration=str(good)).model_specs[0].quantize_calibration == good
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"query": "q", "document": "d"}\n{"query": "q"}\n')
    with pytest.raises(ConfigError, match=r"RERANKER_QUANTIZE_CALIBRATION: .*bad.jsonl:2 must be an object"):
        start_up_settings(_env_file=None, quantize_calibration=str(bad))
    with pytest.raises(ConfigError, match="RERANKER_QUANTIZE_CALIBRATION: cannot read"):
        start_up_settings(_env_file=None, quantize_calibration=str(tmp_path / "missing.jsonl"))
    with pytest.raises(ConfigError, match="RERANKER_QUANTIZE=int8 and RERANKER_DTYPE=float32"):
        load_settings(_env_file=None, quantize="int8", dtype="fp32")
    with pytest.raises(ConfigError, match="RERANKER_QUANTIZE: Input should be 'auto', 'int8' or 'off'"):
        load_settings(_env_file=None, quantize="int4")
    models = json.dumps([{"model": "BAAI/bge-reranker-base", "quantize": "off"}])
    assert load_settings(_env_file=None, quantize="int8", models=models).model_specs[0].quantize == "off"


def test_quantizing_opens_no_outside_connection(int8_model, tmp_path):
    # NNCF sends usage events (Google Analytics, through openvino_telemetry) unless it is imported
    # with that package hidden, as OpenVINO is. Outside pytest (which NNCF itself treats as "no
    # telemetry"), with every outside connection recorded and refused.
    attempts = tmp_path / "attempts.txt"
    script = tmp_path / "quantize_guarded.py"
    script.write_text(network_guard(attempts) + f'''
import torch
from reranker_serve.config import Settings
from reranker_serve.device import Placement
from reranker_serve.models import load_model
spec = Settings(_env_file=None, model_path={str(int8_model)!r}, max_length=128, quantize="int8",
                model_cache_dir={str(tmp_path / "cache")!r}, use_offline_mode=True).model_specs[0]
model = load_model(spec, Placement("cpu", torch.float32))
assert model.quantization["mode"].startswith("int8-"), model.quantization
assert "pytest" not in sys.modules
print("quantized", model.quantization["mode"])
''')
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith(("RERANKER_", "HF_", "NNCF_"))}
    proc = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "quantized int8-" in proc.stdout
    assert not attempts.exists(), attempts.read_text()
