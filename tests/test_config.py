"""Settings: RERANKER_ variables, .env, validation with one clear line per bad variable."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from reranker_serve.config import ConfigError, Settings, load_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    for key in list(os.environ):
        if key.startswith("RERANKER_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)  # no stray .env


def test_defaults():
    s = load_settings()
    assert (s.host, s.port, s.workers) == ("127.0.0.1", 8000, 1)
    assert s.model_name == "BAAI/bge-reranker-v2-m3" and s.model_path is None
    assert s.model_cache_dir == Path("models") and s.use_offline_mode is False
    assert (s.max_length, s.batch_size, s.max_documents) == (512, 0, 1000)  # 0: per device
    assert (s.device, s.use_fp16, s.dtype) == ("auto", True, "auto")
    assert s.api_key is None and s.log_level == "info"
    (spec,) = s.model_specs
    assert spec.source == "BAAI/bge-reranker-v2-m3" and spec.names == ("BAAI/bge-reranker-v2-m3",) and not spec.local
    assert (spec.model_type, spec.trust_remote_code, spec.instruction) == ("auto", False, None)


def test_environment_and_dotenv(monkeypatch, tmp_path, tiny_model):
    (tmp_path / ".env").write_text(f"RERANKER_PORT=9001\nRERANKER_MODEL_PATH={tiny_model}\nRERANKER_API_KEY=\n")
    monkeypatch.setenv("RERANKER_DTYPE", "BF16")
    monkeypatch.setenv("RERANKER_LOG_LEVEL", "DEBUG")
    monkeypatch.setenv("RERANKER_USE_OFFLINE_MODE", "true")
    s = load_settings()
    assert s.port == 9001 and s.dtype == "bfloat16" and s.log_level == "debug" and s.use_offline_mode
    assert s.api_key is None  # an empty value means "no key"
    (spec,) = s.model_specs
    assert spec.source == str(tiny_model) and spec.names == ("tiny-reranker",) and spec.local  # MODEL_PATH wins
    monkeypatch.setenv("RERANKER_SERVED_MODEL_NAME", "rerank-v3.5")
    assert load_settings().model_specs[0].names == ("rerank-v3.5",)


@pytest.mark.parametrize(
    "var,value,needle",
    [
        ("RERANKER_PORT", "70000", "RERANKER_PORT: Input should be less than or equal to 65535 (got '70000')"),
        ("RERANKER_PORT", "http", "RERANKER_PORT: Input should be a valid integer"),
        ("RERANKER_DEVICE", "tpu", "RERANKER_DEVICE: Input should be 'auto', 'cuda', 'mps' or 'cpu'"),
        ("RERANKER_DTYPE", "int4", "RERANKER_DTYPE:"),
        ("RERANKER_MAX_DOCUMENTS", "0", "RERANKER_MAX_DOCUMENTS: Input should be greater than or equal to 1"),
        ("RERANKER_USE_FP16", "perhaps", "RERANKER_USE_FP16: Input should be a valid boolean"),
        ("RERANKER_MODEL_PATH", "/nowhere/model", "RERANKER_MODEL_PATH: folder '/nowhere/model' does not exist"),
        ("RERANKER_LOG_LEVEL", "loud", "RERANKER_LOG_LEVEL:"),
    ],
)
def test_invalid_values_name_the_variable(monkeypatch, var, value, needle):
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert needle in str(info.value)
    assert "\n" not in str(info.value)


def test_model_path_must_be_a_model_folder(tmp_path):
    with pytest.raises(ConfigError, match="holds no config.json"):
        load_settings(model_path=tmp_path)


def test_queue_must_hold_the_largest_request():
    with pytest.raises(ConfigError, match="RERANKER_MAX_QUEUE"):
        load_settings(max_queue=10, max_documents=100)


def test_main_exits_2_with_one_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("RERANKER_")}
    env["RERANKER_PORT"] = "not-a-port"
    proc = subprocess.run([sys.executable, "-m", "reranker_serve"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "RERANKER_PORT" in lines[0] and "Traceback" not in proc.stderr
